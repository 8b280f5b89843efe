// A small Markdown renderer for the model's answers. It builds DOM nodes one by one and puts
// every piece of model text in with createTextNode: no HTML from the model is ever parsed,
// so no markup, script, style or event handler in an answer can take effect.
//
// Supported: paragraphs, ATX headings, fenced code blocks, block quotes, bullet and numbered
// lists, horizontal rules, and inline code, **strong**, *emphasis*, ~~strike~~, links
// [text](https://...) and <https://...> autolinks. Links go only to http(s) or mailto URLs;
// anything else is shown as text. Images are never loaded: ![alt](url) shows its alt text.
// An unclosed code fence (an answer still streaming) renders as code up to the end.
"use strict";

const SAFE_URL = /^(https?:\/\/|mailto:)[^\s\u0000-\u001f]*$/i;
const MAX_DEPTH = 8;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function text(value) {
  return document.createTextNode(value);
}

export function isSafeUrl(url) {
  return SAFE_URL.test(url);
}

function link(label, url, depth) {
  if (!isSafeUrl(url)) {
    // Not a link we follow: show the label and the target as plain text.
    const span = el("span", "md-unsafe-link");
    appendInline(span, label, depth + 1);
    span.appendChild(text(" (" + url + ")"));
    return span;
  }
  const a = el("a");
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  appendInline(a, label, depth + 1);
  return a;
}

// Finds the closing `marker` after `from`, not immediately after an opening space.
function closing(source, marker, from) {
  let index = source.indexOf(marker, from);
  while (index !== -1 && index === from) index = source.indexOf(marker, index + 1);
  return index;
}

// Appends inline Markdown `source` to `parent` as nodes.
export function appendInline(parent, source, depth = 0) {
  if (depth > MAX_DEPTH) {
    parent.appendChild(text(source));
    return;
  }
  let plain = "";
  const flush = () => {
    if (plain) parent.appendChild(text(plain));
    plain = "";
  };
  let i = 0;
  while (i < source.length) {
    const c = source[i];
    const rest = source.slice(i);
    if (c === "\\" && i + 1 < source.length && /[\\`*_{}\[\]()#+\-.!~<>|]/.test(source[i + 1])) {
      plain += source[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      const ticks = rest.match(/^`+/)[0];
      const end = source.indexOf(ticks, i + ticks.length);
      if (end !== -1) {
        flush();
        const code = el("code");
        code.appendChild(text(source.slice(i + ticks.length, end).replace(/^ (.*) $/, "$1")));
        parent.appendChild(code);
        i = end + ticks.length;
        continue;
      }
    }
    if (c === "<") {
      const auto = rest.match(/^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i);
      if (auto) {
        flush();
        parent.appendChild(link(auto[1], auto[1], depth));
        i += auto[0].length;
        continue;
      }
    }
    if (c === "!" && source[i + 1] === "[") {
      const image = rest.match(/^!\[([^\]]*)\]\(([^()\s]*)\)/);
      if (image) {
        flush();
        const span = el("span", "md-image");
        span.appendChild(text("[image: " + image[1] + "]"));
        parent.appendChild(span);
        i += image[0].length;
        continue;
      }
    }
    if (c === "[") {
      const found = rest.match(/^\[([^\]]+)\]\(([^()\s]*(?:\([^()\s]*\)[^()\s]*)*)\)/);
      if (found) {
        flush();
        parent.appendChild(link(found[1], found[2], depth));
        i += found[0].length;
        continue;
      }
    }
    const pairs = [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];
    let matched = false;
    for (const [marker, tag] of pairs) {
      if (!rest.startsWith(marker)) continue;
      const after = source[i + marker.length];
      if (after === undefined || /\s/.test(after)) continue;
      // Underscores inside words (snake_case) are not emphasis.
      if (marker[0] === "_" && i > 0 && /\w/.test(source[i - 1])) continue;
      const end = closing(source, marker, i + marker.length);
      if (end === -1 || /\s/.test(source[end - 1])) continue;
      if (marker[0] === "_" && /\w/.test(source[end + marker.length] || "")) continue;
      flush();
      const node = el(tag);
      appendInline(node, source.slice(i + marker.length, end), depth + 1);
      parent.appendChild(node);
      i = end + marker.length;
      matched = true;
      break;
    }
    if (matched) continue;
    plain += c;
    i += 1;
  }
  flush();
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^( {0,3})([-*+])\s+(.*)$/;
const NUMBERED = /^( {0,3})(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) || NUMBERED.test(line) || QUOTE.test(line);
}

// Appends block Markdown `source` to `parent`.
function appendBlocks(parent, source, depth) {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^\s*$/.test(line)) {
      i += 1;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(marker[0].repeat(marker.length)) && lines[i].trim().replace(new RegExp("\\" + marker[0], "g"), "") === "")) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence, or past the end while streaming
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.language = fence[2];
      code.appendChild(text(body.join("\n")));
      pre.appendChild(code);
      parent.appendChild(pre);
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      // The page has its own h1 and h2; answers start at h3.
      const level = Math.min(6, heading[1].length + 2);
      const node = el("h" + level);
      appendInline(node, heading[2], depth);
      parent.appendChild(node);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      parent.appendChild(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(lines[i].match(QUOTE)[1]);
        i += 1;
      }
      const quote = el("blockquote");
      if (depth < MAX_DEPTH) appendBlocks(quote, inner.join("\n"), depth + 1);
      else quote.appendChild(text(inner.join("\n")));
      parent.appendChild(quote);
      continue;
    }
    const bullet = line.match(BULLET);
    const numbered = line.match(NUMBERED);
    if (bullet || numbered) {
      const pattern = bullet ? BULLET : NUMBERED;
      const list = el(bullet ? "ul" : "ol");
      if (numbered && numbered[2] !== "1") list.start = Number(numbered[2]);
      let item = null;
      let itemLines = [];
      const closeItem = () => {
        if (!item) return;
        if (depth < MAX_DEPTH) appendBlocks(item, itemLines.join("\n"), depth + 1);
        else item.appendChild(text(itemLines.join("\n")));
        list.appendChild(item);
      };
      while (i < lines.length) {
        const current = lines[i];
        const start = current.match(pattern);
        if (start) {
          closeItem();
          item = el("li");
          itemLines = [start[3]];
        } else if (/^\s*$/.test(current)) {
          // A blank line ends the list unless an indented continuation follows.
          if (i + 1 < lines.length && /^ {2,}\S/.test(lines[i + 1])) itemLines.push("");
          else break;
        } else if (/^ {2,}/.test(current)) {
          itemLines.push(current.replace(/^ {2,4}/, ""));
        } else if (isBlockStart(current)) {
          break;
        } else {
          itemLines.push(current); // a lazy continuation line
        }
        i += 1;
      }
      closeItem();
      parent.appendChild(list);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && !/^\s*$/.test(lines[i]) && !(paragraph.length && isBlockStart(lines[i]))) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    const p = el("p");
    paragraph.forEach((part, index) => {
      if (index > 0) p.appendChild(el("br"));
      appendInline(p, part, depth);
    });
    parent.appendChild(p);
  }
}

// Replaces the content of `container` with `source` rendered.
export function renderMarkdown(container, source) {
  const fragment = document.createDocumentFragment();
  appendBlocks(fragment, String(source), 0);
  container.replaceChildren(fragment);
}
