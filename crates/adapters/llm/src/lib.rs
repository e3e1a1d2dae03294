//! Chat models behind [`confab_ports::ChatModel`].
