// Model output as safe HTML: Markdown through marked, then DOMPurify.
// Nothing a model writes can run script here: handler attributes,
// `javascript:` and `data:` links, scripts, frames, forms and styles are
// removed, links open in a new tab without the page as their opener, and
// the page's CSP refuses inline code besides.

import { Marked } from '/assets/marked.esm.js';
import DOMPurify from '/assets/purify.es.mjs';

const markdown = new Marked({ gfm: true, breaks: false, async: false });

const ALLOWED_TAGS = [
  'a', 'b', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6',
  'hr', 'i', 'input', 'li', 'ol', 'p', 'pre', 's', 'strong', 'sub', 'sup', 'table',
  'tbody', 'td', 'th', 'thead', 'tr', 'ul',
];
const ALLOWED_ATTR = ['href', 'title', 'class', 'align', 'type', 'checked', 'disabled', 'start'];

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    const href = node.getAttribute('href') ?? '';
    // Only web and mail links; anything else (javascript:, data:, vbscript:) is dropped.
    if (!/^(https?:|mailto:|#)/i.test(href.trim())) node.removeAttribute('href');
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
  if (node.tagName === 'INPUT' && node.getAttribute('type') !== 'checkbox') node.remove();
  if (node.tagName === 'INPUT') node.setAttribute('disabled', '');
  if (node.hasAttribute('class')) {
    // Only marked's code language classes.
    const kept = node.getAttribute('class').split(/\s+/).filter((c) => /^language-[\w+-]+$/.test(c));
    if (kept.length) node.setAttribute('class', kept.join(' '));
    else node.removeAttribute('class');
  }
});

/**
 * The Markdown `text` as a sanitised fragment, ready to be put in the page.
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text) {
  const html = markdown.parse(text);
  return DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR: [...ALLOWED_ATTR, 'target', 'rel'],
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
}
