//! Inclusive Canonical XML 1.1 (W3C, 2 May 2008), without comments, for the two node sets an
//! enveloped XML-DSig signature needs: the whole document minus the `Signature` element, and
//! the `SignedInfo` subtree.
//!
//! Written for NVIDIA's RIMs, and deliberately small: the input is parsed by roxmltree (no
//! DTD, so no default attributes and no external entities), which has already normalized
//! line ends, resolved character and entity references and normalized attribute values as the
//! XPath data model requires. What is left is the serialization rules of C14N:
//! - no XML declaration, no comments; processing instructions outside the document element
//!   separated by a line feed;
//! - start and end tags always written out (`<a></a>`), qualified names as written;
//! - namespace declarations: an element writes each in-scope namespace whose binding differs
//!   from what its nearest output ancestor wrote (the apex of a subtree writes all of them),
//!   default first, then by prefix; `xmlns=""` when the default is dropped;
//! - attributes sorted by namespace URI, then local name (unqualified ones first);
//! - escaping: text `&`, `<`, `>`, CR; attribute values `&`, `<`, `"`, TAB, LF, CR.
//!
//! `xml:` attributes (C14N 1.1's inheritance and xml:base fix-up for document subsets) are
//! refused rather than half-supported: NVIDIA's RIMs have none.

use roxmltree::{Node, NodeType};

/// The prefix → URI bindings an output element wrote or inherited, in scope for its children.
type Scope = Vec<(Option<String>, String)>;

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Canonicalizes the whole document, leaving out `exclude` (the Signature element) and its
/// descendants: the enveloped-signature transform followed by C14N 1.1.
pub fn document_without(
    doc: &roxmltree::Document<'_>,
    source: &str,
    exclude: Option<Node<'_, '_>>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(source.len());
    let root = doc.root();
    let element_seen = {
        let mut seen = false;
        let mut before = Vec::new();
        for child in root.children() {
            if child.is_element() {
                seen = true;
            }
            before.push((child, seen));
        }
        before
    };
    for (child, after_root_element) in element_seen {
        match child.node_type() {
            NodeType::Element => element(child, source, &Vec::new(), exclude, &mut out)?,
            NodeType::PI => {
                // Outside the document element: a LF after a PI before it, before a PI after it.
                if after_root_element {
                    out.push(b'\n');
                }
                pi(child, &mut out);
                if !after_root_element {
                    out.push(b'\n');
                }
            }
            // Comments are dropped; whitespace outside the document element is not in the
            // data model.
            _ => {}
        }
    }
    Ok(out)
}

/// Canonicalizes the subtree rooted at `apex` (for `SignedInfo`): the apex writes every
/// namespace in scope, inherited ones included.
pub fn subtree(apex: Node<'_, '_>, source: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    element(apex, source, &Vec::new(), None, &mut out)?;
    Ok(out)
}

fn element(
    node: Node<'_, '_>,
    source: &str,
    parent_scope: &Scope,
    exclude: Option<Node<'_, '_>>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if exclude.is_some_and(|x| x.id() == node.id()) {
        return Ok(());
    }
    let qname = element_qname(node, source)?;
    out.push(b'<');
    out.extend_from_slice(qname.as_bytes());

    // Namespaces in scope on this element (roxmltree lists inherited ones too).
    let in_scope: Scope = node
        .namespaces()
        .filter(|ns| ns.name() != Some("xml"))
        .map(|ns| (ns.name().map(str::to_owned), ns.uri().to_owned()))
        .collect();
    let bound = |scope: &Scope, prefix: &Option<String>| {
        scope
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.clone())
    };
    let mut rendered: Scope = Vec::new();
    for (prefix, uri) in &in_scope {
        let parent = bound(parent_scope, prefix);
        if prefix.is_none() && uri.is_empty() {
            if parent.is_some_and(|u| !u.is_empty()) {
                rendered.push((None, String::new()));
            }
        } else if parent.as_ref() != Some(uri) {
            rendered.push((prefix.clone(), uri.clone()));
        }
    }
    // A default namespace dropped without an explicit xmlns="".
    if !in_scope.iter().any(|(p, _)| p.is_none())
        && bound(parent_scope, &None).is_some_and(|u| !u.is_empty())
    {
        rendered.push((None, String::new()));
    }
    rendered.sort_by(|a, b| a.0.cmp(&b.0));
    rendered.dedup();
    for (prefix, uri) in &rendered {
        match prefix {
            None => out.extend_from_slice(b" xmlns=\""),
            Some(p) => {
                out.extend_from_slice(b" xmlns:");
                out.extend_from_slice(p.as_bytes());
                out.extend_from_slice(b"=\"");
            }
        }
        escape_attr(uri, out);
        out.push(b'"');
    }

    let mut attrs = Vec::new();
    for attr in node.attributes() {
        if attr.namespace() == Some(XML_NS) {
            return Err("xml: attributes are not supported in a signed RIM".to_owned());
        }
        let qname = source
            .get(attr.range_qname())
            .ok_or("an attribute's name is out of range")?;
        attrs.push((
            attr.namespace().unwrap_or(""),
            attr.name(),
            qname,
            attr.value(),
        ));
    }
    attrs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (_, _, qname, value) in attrs {
        out.push(b' ');
        out.extend_from_slice(qname.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attr(value, out);
        out.push(b'"');
    }
    out.push(b'>');

    let mut scope = parent_scope.clone();
    for (prefix, uri) in rendered {
        scope.retain(|(p, _)| *p != prefix);
        scope.push((prefix, uri));
    }
    for child in node.children() {
        match child.node_type() {
            NodeType::Element => element(child, source, &scope, exclude, out)?,
            NodeType::Text => escape_text(child.text().unwrap_or(""), out),
            NodeType::PI => pi(child, out),
            _ => {}
        }
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(qname.as_bytes());
    out.push(b'>');
    Ok(())
}

/// The element's qualified name as written in the source (the prefix matters: two prefixes
/// may bind the same URI, and C14N keeps the one used).
fn element_qname<'a>(node: Node<'_, '_>, source: &'a str) -> Result<&'a str, String> {
    let range = node.range();
    let text = source
        .get(range.start..range.end)
        .ok_or("an element is out of range")?;
    let name = text
        .strip_prefix('<')
        .ok_or("an element does not start with <")?;
    let end = name
        .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
        .unwrap_or(name.len());
    let qname = &name[..end];
    let local = qname.rsplit(':').next().unwrap_or(qname);
    if local != node.tag_name().name() {
        return Err("an element's name does not match the source".to_owned());
    }
    let start = range.start + 1;
    Ok(&source[start..start + end])
}

fn pi(node: Node<'_, '_>, out: &mut Vec<u8>) {
    if let Some(p) = node.pi() {
        out.extend_from_slice(b"<?");
        out.extend_from_slice(p.target.as_bytes());
        if let Some(v) = p.value.filter(|v| !v.is_empty()) {
            out.push(b' ');
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"?>");
    }
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn escape_attr(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\t' => out.extend_from_slice(b"&#x9;"),
            '\n' => out.extend_from_slice(b"&#xA;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(xml: &str) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        String::from_utf8(document_without(&doc, xml, None).unwrap()).unwrap()
    }

    #[test]
    fn w3c_style_examples() {
        // Empty elements expanded, attributes sorted, comments dropped, quotes normalized.
        assert_eq!(
            canon(
                "<?xml version=\"1.0\"?>\n<!-- c --><a  b='1' a=\"x&amp;y\"><e/><!-- c -->t&gt;</a>"
            ),
            "<a a=\"x&amp;y\" b=\"1\"><e></e>t&gt;</a>"
        );
        // Namespaced attributes sort by URI after unqualified ones; declarations by prefix.
        assert_eq!(
            canon("<a xmlns:z='urn:a' xmlns:b='urn:b' b:x='1' z:y='2' c='3'/>"),
            "<a xmlns:b=\"urn:b\" xmlns:z=\"urn:a\" c=\"3\" z:y=\"2\" b:x=\"1\"></a>"
        );
        // Redundant declarations are dropped; xmlns="" appears when the default is undone.
        assert_eq!(
            canon("<a xmlns='urn:d'><b xmlns='urn:d'/><c xmlns=''/></a>"),
            "<a xmlns=\"urn:d\"><b></b><c xmlns=\"\"></c></a>"
        );
        // Whitespace in attributes and CR in text.
        assert_eq!(
            canon("<a v='&#9;&#10;'>&#13;</a>"),
            "<a v=\"&#x9;&#xA;\">&#xD;</a>"
        );
    }

    #[test]
    fn subtree_apex_writes_inherited_namespaces() {
        let xml = "<r xmlns='urn:r' xmlns:p='urn:p'><p:s><p:t/></p:s></r>";
        let doc = roxmltree::Document::parse(xml).unwrap();
        let s = doc.root_element().first_child().unwrap();
        assert_eq!(
            String::from_utf8(subtree(s, xml).unwrap()).unwrap(),
            "<p:s xmlns=\"urn:r\" xmlns:p=\"urn:p\"><p:t></p:t></p:s>"
        );
    }
}
