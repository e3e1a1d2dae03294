//! The parser on whole, split and broken streams.

use super::*;
use confab_ports::Usage;

/// All lines of `body` pushed in the given pieces, then the end.
fn lines_of(pieces: &[&[u8]], max: usize) -> Result<Vec<Vec<u8>>, SseError> {
    let mut s = LineSplitter::new(max);
    let mut out = Vec::new();
    for piece in pieces {
        s.push(piece);
        while let Some(line) = s.next_line()? {
            out.push(line);
        }
    }
    s.end();
    while let Some(line) = s.next_line()? {
        out.push(line);
    }
    Ok(out)
}

/// Everything a body means, split into lines in the given pieces.
fn items_of(pieces: &[&[u8]]) -> Result<Vec<Item>, SseError> {
    lines_of(pieces, MAX_LINE_BYTES)?
        .iter()
        .map(|l| decode_line(l))
        .filter(|i| !matches!(i, Ok(Item::Skip)))
        .collect()
}

fn text(t: &str) -> Item {
    Item::Chunk(Chunk {
        text: Some(t.to_owned()),
        ..Chunk::default()
    })
}

const SAMPLE: &str = ": keep-alive\r\n\
    event: message\r\n\
    id: 7\r\n\
    retry: 1000\r\n\
    data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\r\n\r\n\
    data:{\"choices\":[{\"delta\":{\"content\":\"Grüße, \"}}]}\r\n\r\n\
    data: {\"choices\":[{\"delta\":{\"content\":\"世界 🌍\"}}]}\n\n\
    data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}]}\r\r\
    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\r\n\r\n\
    data: [DONE]\r\n\r\n";

fn sample_items() -> Vec<Item> {
    vec![
        Item::Chunk(Chunk::default()),
        text("Grüße, "),
        text("世界 🌍"),
        Item::Chunk(Chunk {
            finish: Some(Finish::Stop),
            ..Chunk::default()
        }),
        Item::Chunk(Chunk {
            usage: Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 3,
            }),
            ..Chunk::default()
        }),
        Item::Done,
    ]
}

#[test]
fn the_sample_parses_whole() {
    assert_eq!(items_of(&[SAMPLE.as_bytes()]).unwrap(), sample_items());
}

#[test]
fn the_sample_parses_split_at_every_position() {
    let bytes = SAMPLE.as_bytes();
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(items_of(&[a, b]).unwrap(), sample_items(), "cut at {cut}");
    }
}

#[test]
fn the_sample_parses_byte_by_byte() {
    let pieces: Vec<&[u8]> = SAMPLE.as_bytes().chunks(1).collect();
    assert_eq!(items_of(&pieces).unwrap(), sample_items());
}

#[test]
fn line_ends_of_every_kind_and_a_last_line_without_one() {
    let lines = lines_of(&[b"a\r", b"\nb\rc\n\r\nd"], 100).unwrap();
    let expected: Vec<&[u8]> = vec![b"a", b"b", b"c", b"", b"d"];
    assert_eq!(lines, expected);
}

#[test]
fn comments_and_other_fields_are_skipped() {
    for line in [
        &b""[..],
        b":",
        b": ping",
        b"event: delta",
        b"id: 3",
        b"retry: 10",
        b"data",
    ] {
        assert_eq!(decode_line(line).unwrap(), Item::Skip);
    }
}

#[test]
fn done_with_or_without_a_space() {
    assert_eq!(decode_line(b"data: [DONE]").unwrap(), Item::Done);
    assert_eq!(decode_line(b"data:[DONE]").unwrap(), Item::Done);
}

#[test]
fn finish_reasons() {
    let finish = |r: &str| {
        let line = format!(r#"data: {{"choices":[{{"delta":{{}},"finish_reason":"{r}"}}]}}"#);
        match decode_line(line.as_bytes()).unwrap() {
            Item::Chunk(c) => c.finish,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(finish("stop"), Some(Finish::Stop));
    assert_eq!(finish("length"), Some(Finish::Length));
    assert_eq!(
        finish("content_filter"),
        Some(Finish::Other("content_filter".to_owned()))
    );
}

#[test]
fn a_usage_chunk_with_text_and_null_fields() {
    let line =
        br#"data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}],"usage":null}"#;
    assert_eq!(decode_line(line).unwrap(), text("x"));
    let line = br#"data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
    let Item::Chunk(chunk) = decode_line(line).unwrap() else {
        panic!("not a chunk")
    };
    assert_eq!(
        chunk.usage,
        Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 2
        })
    );
}

#[test]
fn an_error_object_is_reported_for_logging() {
    let line = br#"data: {"error":{"message":"overloaded","code":503}}"#;
    match decode_line(line).unwrap() {
        Item::Error(detail) => assert!(detail.contains("overloaded")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_json_and_wrong_shapes_are_refused_without_quoting() {
    for line in [
        &br#"data: {"choices":[{"delta":{"content":"sec"#[..],
        br#"data: {"choices":"SECRET"}"#,
        br#"data: {"choices":[{"delta":{"content":42}}]}"#,
        br#"data: "SECRET""#,
        b"data: SECRET",
    ] {
        let err = decode_line(line).unwrap_err();
        assert!(!err.0.contains("SECRET") && !err.0.contains("sec"), "{err}");
    }
    let err = decode_line(b"data: \xff\xfe").unwrap_err();
    assert!(err.0.contains("UTF-8"));
}

#[test]
fn an_over_long_line_is_refused_complete_or_not() {
    let long = vec![b'a'; 20];
    assert!(lines_of(&[&long], 10).is_err());
    assert!(lines_of(&[&long, b"\n"], 10).is_err());
    let ok = lines_of(&[&long[..10], b"\n", &long[..10]], 10).unwrap();
    assert_eq!(ok.len(), 2);
}
