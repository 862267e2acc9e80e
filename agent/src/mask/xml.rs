//! Masking of XML documents, with the semantics of JSON ones (body.rs): AWS's query and
//! REST-XML APIs (IAM, STS, S3, EC2, SNS...) answer in XML. Element names stand for
//! member names.
//!
//! The document is read with quick-xml as events with their byte spans; only the spans
//! of masked values are rewritten, everything else (the declaration, comments,
//! processing instructions, whitespace, tags, namespace declarations, the spelling of
//! untouched text and attributes) is copied byte for byte.
//!
//! What becomes of a masked value:
//! * an element whose local name (its prefix ignored: `<ns:SecretAccessKey>` is
//!   `SecretAccessKey`) matches a rule's `columns` glob is masked whole by the first such
//!   rule (file order): everything between its start and end tags is replaced by the
//!   output of the strategy, escaped, applied to
//!   - its text when it has no child element: character data with references decoded
//!     (`&amp;` is `&`, `&#x41;` is `A`) and CDATA sections included, concatenated, line
//!     ends normalised as XML parsers do; comments and processing instructions are not
//!     text (they go with the rest of the content). The same value in JSON gives the
//!     same output.
//!   - its content as written in the document when it has child elements (the bytes
//!     between its tags, markup included), as `mask_json` applies the strategy to the
//!     JSON text of an object: `<Credentials><AccessKeyId>...</Credentials>` becomes
//!     `<Credentials>[redacted]</Credentials>`, a flat text element replacing the
//!     subtree, and `hash` hashes that serialized content.
//!
//!   An element with no content at all (`<Password/>`, `<Password></Password>`) has
//!   nothing to mask: it is left as is and not counted (like `null` in JSON). The
//!   element's own attributes are scanned like any other; inside a masked element
//!   nothing else is looked at.
//! * every other text node, CDATA section and attribute value is decoded (references;
//!   attribute values normalised as XML does: a literal tab or line end is a space) and
//!   goes through the injected secret ([`super::SECRET_MASK`], counted as an echo) then
//!   the detectors; a hit is replaced in place and the node is written back escaped
//!   (`&amp;`, `&lt;`, `&gt;`, `&#13;`; in an attribute also its quote, `&#9;` and
//!   `&#10;`). A text node is the character data between two pieces of markup (text,
//!   references and CDATA sections in a row), rewritten whole when it changes; one that
//!   was a single CDATA section stays one when it can. Comments and processing
//!   instructions separate nodes, as in a DOM: text on either side is scanned apart.
//! * names (of elements and attributes), namespace declarations (`xmlns`, `xmlns:*`),
//!   comments, processing instructions and the declaration are not scanned.
//!
//! Refused with [`NotXml`] (and nothing counted): bytes that are not UTF-8, or a declared
//! encoding other than UTF-8 (a UTF-8 byte order mark is kept); a DOCTYPE, whatever it
//! holds (a DTD's entities could assemble a value the detectors never see, or expand
//! exponentially); an XML declaration anywhere but at the start; mismatched or
//! unmatched end tags; elements left open at the end; references to undefined entities
//! or to characters XML does not allow, a `&` that starts no reference; malformed or
//! duplicated attributes, `<` in an attribute value; `--` in a comment; character data
//! outside the root element, no root element or more than one; elements nested deeper
//! than the JSON limit (128 levels).
use std::borrow::Cow;
use std::sync::Arc;

use memchr::memmem;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::body::{BodyMasker, MAX_DEPTH};

/// An XML document that cannot be masked: not well-formed, not UTF-8, with a DOCTYPE,
/// or nested deeper than the masker allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not well-formed XML: {0}")]
pub struct NotXml(pub String);

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl BodyMasker {
    /// Masks one XML document (see xml.rs for what is masked and how). `Ok(None)`:
    /// nothing changed (send the original bytes). A document refused is not counted.
    pub fn mask_xml(
        &mut self,
        xml: &[u8],
        secret: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, NotXml> {
        let body = xml.strip_prefix(UTF8_BOM).unwrap_or(xml);
        let base = xml.len() - body.len();
        let src = std::str::from_utf8(body).map_err(|e| NotXml(format!("not UTF-8: {e}")))?;
        let finder = secret.filter(|s| !s.is_empty()).map(memmem::Finder::new);
        // The walk counts as it goes; a refused document must leave no count behind.
        let counts = self.counts.clone();
        let secret_echoes = self.secret_echoes;
        let mut walk = Walk {
            src,
            base,
            out: Vec::new(),
            copied: 0,
            changed: false,
            masker: self,
            secret: finder.as_ref(),
            depth: 0,
            root_seen: false,
            run: None,
            run_text: String::new(),
            whole: None,
        };
        let result = walk.document();
        let Walk {
            out,
            copied,
            changed,
            ..
        } = walk;
        if let Err(e) = result {
            self.counts = counts;
            self.secret_echoes = secret_echoes;
            return Err(e);
        }
        if !changed {
            return Ok(None);
        }
        let mut doc = Vec::with_capacity(base + out.len() + (body.len() - copied));
        doc.extend_from_slice(&xml[..base]);
        doc.extend_from_slice(&out);
        doc.extend_from_slice(&body[copied..]);
        Ok(Some(doc))
    }
}

/// Character data in a row (text, references, CDATA sections) outside masked elements:
/// `src[start..end]`, its decoded text in [`Walk::run_text`].
#[derive(Debug)]
struct Run {
    start: usize,
    end: usize,
    /// The run is one CDATA section.
    cdata: bool,
}

/// An element being masked whole.
#[derive(Debug)]
struct Whole {
    /// Index into the session's rules.
    rule: usize,
    /// Its depth (the root is 1).
    depth: usize,
    /// Where its content starts (just after its start tag).
    content: usize,
    /// Whether a child element was seen.
    children: bool,
    /// Its decoded text so far (while it has no child).
    text: String,
}

/// One walk over an XML document, copying it to `out` with replacements.
struct Walk<'s, 'm, 'f> {
    /// The document after any byte order mark.
    src: &'s str,
    /// The length of the byte order mark (for positions in messages).
    base: usize,
    /// Output so far; `src[copied..]` is still to be copied.
    out: Vec<u8>,
    copied: usize,
    changed: bool,
    masker: &'m mut BodyMasker,
    secret: Option<&'f memmem::Finder<'f>>,
    /// Open elements.
    depth: usize,
    root_seen: bool,
    run: Option<Run>,
    run_text: String,
    whole: Option<Whole>,
}

impl Walk<'_, '_, '_> {
    fn document(&mut self) -> Result<(), NotXml> {
        let mut reader = Reader::from_str(self.src);
        // quick-xml already refuses mismatched and unmatched end tags and lone `&`.
        reader.config_mut().check_comments = true;
        loop {
            let start = self.at(reader.buffer_position());
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(e) => {
                    let at = self.at(reader.error_position());
                    return Err(self.error(at, &e.to_string()));
                }
            };
            let end = self.at(reader.buffer_position());
            match event {
                Event::Decl(decl) => {
                    if start != 0 {
                        return Err(self.error(start, "XML declaration not at the start"));
                    }
                    if let Some(encoding) = decl.encoding() {
                        let encoding = encoding
                            .map_err(|e| self.error(start, &format!("XML declaration: {e}")))?;
                        if !encoding.eq_ignore_ascii_case("utf-8")
                            && !encoding.eq_ignore_ascii_case("utf8")
                        {
                            return Err(self.error(
                                start,
                                &format!("declared encoding {encoding:?}: only UTF-8 is read"),
                            ));
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(self.error(
                        start,
                        "DOCTYPE declaration (DTDs are refused: their entities could hide or \
                         expand values)",
                    ));
                }
                Event::PI(_) | Event::Comment(_) => self.flush_run(),
                Event::Start(element) => {
                    self.flush_run();
                    self.open(&element, start, end, false)?;
                }
                Event::Empty(element) => {
                    self.flush_run();
                    self.open(&element, start, end, true)?;
                }
                Event::End(_) => {
                    self.flush_run();
                    self.close(start);
                }
                Event::Text(text) => {
                    if self.depth == 0 {
                        if !text.bytes().all(is_xml_space) {
                            return Err(self.error(start, "text outside the root element"));
                        }
                    } else {
                        self.character_data(start, end, &text.xml10_content(), false);
                    }
                }
                Event::CData(cdata) => {
                    if self.depth == 0 {
                        return Err(self.error(start, "CDATA outside the root element"));
                    }
                    self.character_data(start, end, &cdata.xml10_content(), true);
                }
                Event::GeneralRef(reference) => {
                    if self.depth == 0 {
                        return Err(self.error(start, "reference outside the root element"));
                    }
                    let c = resolve(&reference).map_err(|e| self.error(start, &e))?;
                    self.character_data(start, end, c.encode_utf8(&mut [0; 4]), false);
                }
                Event::Eof => {
                    self.flush_run();
                    if self.depth > 0 {
                        return Err(self.error(end, "unclosed element at the end"));
                    }
                    if !self.root_seen {
                        return Err(self.error(end, "no root element"));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A reader position as an index into `src`.
    fn at(&self, position: u64) -> usize {
        usize::try_from(position).map_or(self.src.len(), |p| p.min(self.src.len()))
    }

    fn error(&self, at: usize, what: &str) -> NotXml {
        NotXml(format!("{what} (byte {})", self.base + at))
    }

    /// Replaces `src[start..end]` by `with` (spans come in document order).
    fn replace(&mut self, start: usize, end: usize, with: &[u8]) {
        debug_assert!(self.copied <= start && start <= end);
        self.out
            .extend_from_slice(&self.src.as_bytes()[self.copied..start]);
        self.out.extend_from_slice(with);
        self.copied = end;
        self.changed = true;
    }

    /// A start tag (`empty`: a self-closing one) spanning `src[start..end]`.
    fn open(
        &mut self,
        element: &BytesStart<'_>,
        start: usize,
        end: usize,
        empty: bool,
    ) -> Result<(), NotXml> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(start, &format!("nested deeper than {MAX_DEPTH} levels")));
        }
        if self.depth == 0 {
            if self.root_seen {
                return Err(self.error(start, "more than one root element"));
            }
            self.root_seen = true;
        }
        let scan = self.whole.is_none();
        self.attributes(element, start, scan)?;
        match &mut self.whole {
            Some(whole) => {
                whole.children = true;
                whole.text = String::new();
            }
            None if !empty => {
                let name = element.local_name();
                let rule = self
                    .masker
                    .session
                    .rules
                    .iter()
                    .position(|r| r.masks_column(name.as_ref()));
                if let Some(rule) = rule {
                    self.whole = Some(Whole {
                        rule,
                        depth: self.depth + 1,
                        content: end,
                        children: false,
                        text: String::new(),
                    });
                }
            }
            None => {}
        }
        if !empty {
            self.depth += 1;
        }
        Ok(())
    }

    /// An end tag starting at `start` (quick-xml checked that it closes the open element).
    fn close(&mut self, start: usize) {
        let depth = self.depth;
        if let Some(whole) = self.whole.take_if(|w| w.depth == depth) {
            self.mask_whole(whole, start);
        }
        self.depth = self.depth.saturating_sub(1);
    }

    /// Masks the content of an element matched by name, `src[whole.content..end]`.
    fn mask_whole(&mut self, whole: Whole, end: usize) {
        if whole.content >= end {
            return; // `<Password></Password>`: nothing to mask
        }
        let session = Arc::clone(&self.masker.session);
        let value = if whole.children {
            &self.src.as_bytes()[whole.content..end]
        } else {
            whole.text.as_bytes()
        };
        let masked = session.rules[whole.rule]
            .strategy()
            .apply(value, &session.key);
        self.masker.counts[whole.rule] += 1;
        if self.secret.is_none_or(|f| f.find(value).is_none()) {
            session.keep(whole.rule, value, &masked);
        }
        self.replace(whole.content, end, &escape(&masked, None));
    }

    /// Checks the attributes of a start tag at `start` and, with `scan`, masks their
    /// values by the secret and the detectors.
    fn attributes(
        &mut self,
        element: &BytesStart<'_>,
        start: usize,
        scan: bool,
    ) -> Result<(), NotXml> {
        for attribute in element.attributes() {
            let attribute =
                attribute.map_err(|e| self.error(start, &format!("malformed attribute: {e}")))?;
            let key = attribute.key.as_ref();
            // A reader on a `&str` lends values out of the document itself.
            let Cow::Borrowed(raw) = attribute.value else {
                return Err(self.error(start, "attribute value not in the document"));
            };
            if raw.contains('<') {
                return Err(self.error(start, &format!("`<` in the value of attribute {key}")));
            }
            let value = decode_attribute(raw)
                .map_err(|e| self.error(start, &format!("attribute {key}: {e}")))?;
            if !scan || value.is_empty() || key == "xmlns" || key.starts_with("xmlns:") {
                continue;
            }
            let Some(new) = self.masker.text(value.as_bytes(), self.secret) else {
                continue;
            };
            let at = raw.as_ptr().addr().wrapping_sub(self.src.as_ptr().addr());
            let quote = at
                .checked_add(raw.len())
                .filter(|&end| self.src.get(at..end) == Some(raw))
                .and_then(|end| self.src.as_bytes().get(end).copied())
                .filter(|q| matches!(q, b'"' | b'\''));
            let Some(quote) = quote else {
                return Err(self.error(start, "attribute value not in the document"));
            };
            self.replace(at, at + raw.len(), &escape(&new, Some(quote)));
        }
        Ok(())
    }

    /// Character data `src[start..end]`, decoded as `text`.
    fn character_data(&mut self, start: usize, end: usize, text: &str, cdata: bool) {
        if let Some(whole) = &mut self.whole {
            if !whole.children {
                whole.text.push_str(text);
            }
            return;
        }
        match &mut self.run {
            Some(run) => {
                run.end = end;
                run.cdata = false;
            }
            None => self.run = Some(Run { start, end, cdata }),
        }
        self.run_text.push_str(text);
    }

    /// Masks the pending run of character data, if any, by the secret and the detectors.
    fn flush_run(&mut self) {
        let Some(run) = self.run.take() else {
            return;
        };
        let text = std::mem::take(&mut self.run_text);
        if let Some(new) = self.masker.text(text.as_bytes(), self.secret) {
            let with = if run.cdata && memmem::find(&new, b"]]>").is_none() && !new.contains(&b'\r')
            {
                [b"<![CDATA[".as_slice(), &new, b"]]>"].concat()
            } else {
                escape(&new, None)
            };
            self.replace(run.start, run.end, &with);
        }
        self.run_text = text;
        self.run_text.clear();
    }
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A character XML 1.0 allows (its `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The character a reference (`&name;`, given `name`) stands for: one of the five
/// predefined entities or a character reference. No other entity exists without a DTD.
fn resolve(name: &str) -> Result<char, String> {
    match name {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "apos" => return Ok('\''),
        "quot" => return Ok('"'),
        _ => {}
    }
    let Some(number) = name.strip_prefix('#') else {
        return Err(format!("undefined entity &{name};"));
    };
    let code = match number.strip_prefix('x') {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        None if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => {
            number.parse().ok()
        }
        _ => None,
    };
    code.and_then(char::from_u32)
        .filter(|&c| is_xml_char(c))
        .ok_or_else(|| format!("invalid character reference &{name};"))
}

/// An attribute value as XML reads it: references resolved, each literal tab or line
/// end (`\r\n` counting as one) a space.
fn decode_attribute(raw: &str) -> Result<Cow<'_, str>, String> {
    if !raw
        .bytes()
        .any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '\t', '\n', '\r']) {
        out.push_str(&rest[..i]);
        if rest.as_bytes()[i] == b'&' {
            let after = &rest[i + 1..];
            let semicolon = after
                .find(';')
                .ok_or_else(|| "a `&` that starts no reference".to_owned())?;
            out.push(resolve(&after[..semicolon])?);
            rest = &after[semicolon + 1..];
        } else {
            out.push(' ');
            let len = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[i + len..];
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// `text` escaped for character data (`quote` `None`) or for an attribute value
/// delimited by `quote`, so that an XML reader gets `text` back exactly.
fn escape(text: &[u8], quote: Option<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    for &b in text {
        let entity: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#13;",
            b'"' if quote == Some(b'"') => b"&quot;",
            b'\'' if quote == Some(b'\'') => b"&apos;",
            b'\t' if quote.is_some() => b"&#9;",
            b'\n' if quote.is_some() => b"&#10;",
            _ => {
                out.push(b);
                continue;
            }
        };
        out.extend_from_slice(entity);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde::Deserialize;
    use toml::Spanned;

    use crate::mask::{
        BodyMasker, HashKey, MaskRule, MaskedValues, NotXml, RawMaskRule, SessionMasks,
        HASH_PREFIX, KEY_LEN, REDACTED, SECRET_MASK,
    };

    #[derive(Deserialize)]
    struct File {
        mask: Vec<Spanned<RawMaskRule>>,
    }

    /// The session masks of a configuration text holding `[[mask]]` tables.
    fn masks(text: &str) -> SessionMasks {
        let file: File = toml::from_str(text).expect("toml");
        let rules: Vec<MaskRule> = file
            .mask
            .into_iter()
            .map(|r| MaskRule::from_raw(r).expect("rule"))
            .collect();
        SessionMasks::new(rules, Arc::new(HashKey::from_bytes([7; KEY_LEN])))
    }

    /// One rule masking these element names with `strategy`.
    fn by_name(columns: &str, strategy: &str) -> SessionMasks {
        masks(&format!(
            "[[mask]]\nname = \"by-name\"\ncolumns = {columns}\nstrategy = \"{strategy}\"\n"
        ))
    }

    /// One rule running these detectors with `strategy`.
    fn detecting(detectors: &str, strategy: &str) -> SessionMasks {
        masks(&format!(
            "[[mask]]\nname = \"content\"\ndetectors = {detectors}\nstrategy = \"{strategy}\"\n"
        ))
    }

    /// The document masked (the input itself when unchanged) and the masker.
    fn xml(masks: &SessionMasks, doc: &str) -> (String, BodyMasker) {
        let mut masker = masks.body_masker();
        let out = masker
            .mask_xml(doc.as_bytes(), None)
            .unwrap_or_else(|e| panic!("{e} in {doc:?}"));
        let out = out.map_or_else(|| doc.to_owned(), |o| String::from_utf8(o).expect("UTF-8"));
        (out, masker)
    }

    /// What `mask_json` makes of the string member `name: value`.
    fn json_masked(masks: &SessionMasks, name: &str, value: &str) -> String {
        let doc = serde_json::json!({ name: value }).to_string();
        let out = masks
            .body_masker()
            .mask_json(doc.as_bytes(), None)
            .expect("JSON")
            .expect("masked");
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("JSON out");
        parsed[name].as_str().expect("a string").to_owned()
    }

    fn counts(masker: &BodyMasker) -> Vec<(String, String, u64)> {
        masker
            .masked()
            .into_iter()
            .map(
                |MaskedValues {
                     rule,
                     strategy,
                     values,
                 }| (rule, strategy.into_owned(), values),
            )
            .collect()
    }

    fn count(rule: &str, strategy: &str, values: u64) -> (String, String, u64) {
        (rule.to_owned(), strategy.to_owned(), values)
    }

    fn refused(doc: &[u8]) -> String {
        let m = masks(
            "[[mask]]\nname = \"n\"\ncolumns = [\"SecretAccessKey\"]\ndetectors = [\"all\"]\n",
        );
        let mut masker = m.body_masker();
        match masker.mask_xml(doc, Some(b"tok")) {
            Err(NotXml(why)) => {
                assert_eq!(masker.masked_total(), 0, "{why}");
                assert_eq!(masker.secret_echoes(), 0, "{why}");
                why
            }
            Ok(out) => panic!(
                "accepted {:?}: {:?}",
                String::from_utf8_lossy(doc),
                out.map(|o| String::from_utf8_lossy(&o).into_owned())
            ),
        }
    }

    const IAM_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    const IAM: &str = r#"<CreateAccessKeyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><CreateAccessKeyResult><AccessKey><UserName>bob</UserName><AccessKeyId>AKIAIOSFODNN7EXAMPLE</AccessKeyId><Status>Active</Status><SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey></AccessKey></CreateAccessKeyResult><ResponseMetadata><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ResponseMetadata></CreateAccessKeyResponse>"#;

    #[test]
    fn iam_secret_access_key_masked_by_each_strategy_as_in_json() {
        for strategy in ["redact", "partial", "hash"] {
            let m = by_name(r#"["SecretAccessKey"]"#, strategy);
            let (out, masker) = xml(&m, IAM);
            let masked = json_masked(&m, "SecretAccessKey", IAM_SECRET);
            match strategy {
                "redact" => assert_eq!(masked, REDACTED),
                "partial" => assert_eq!(masked, format!("{}EKEY", "*".repeat(36))),
                _ => {
                    assert!(masked.starts_with(HASH_PREFIX), "{masked}");
                    assert_eq!(masked.len(), HASH_PREFIX.len() + 16);
                }
            }
            assert_eq!(out, IAM.replace(IAM_SECRET, &masked), "{strategy}");
            assert_eq!(counts(&masker), [count("by-name", strategy, 1)]);
            assert_eq!(masker.masked_total(), 1);
            assert_eq!(masker.secret_echoes(), 0);
        }
    }

    #[test]
    fn sts_assume_role_masks_secret_and_session_token() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        let doc = format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>Alice</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/demo/TestAR</Arn>
      <AssumedRoleId>ARO123EXAMPLE123:TestAR</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
      <SecretAccessKey>{IAM_SECRET}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>2019-11-09T13:34:41Z</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>
"#
        );
        let m = by_name(
            r#"["SecretAccessKey", "SessionToken", "*Password*"]"#,
            "redact",
        );
        let (out, masker) = xml(&m, &doc);
        assert_eq!(
            out,
            doc.replace(IAM_SECRET, REDACTED).replace(token, REDACTED)
        );
        assert_eq!(counts(&masker), [count("by-name", "redact", 2)]);
    }

    #[test]
    fn s3_list_objects_key_with_an_email_is_detected() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name>
  <Prefix/>
  <KeyCount>2</KeyCount>
  <MaxKeys>1000</MaxKeys>
  <IsTruncated>false</IsTruncated>
  <Contents>
    <Key>exports/alice@example.com/report.csv</Key>
    <LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag>
    <Size>434234</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents>
    <Key>my-image.jpg</Key>
    <LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag>
    <Size>64994</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
</ListBucketResult>"#;
        let m = detecting(r#"["email"]"#, "partial");
        let (out, masker) = xml(&m, doc);
        assert_eq!(
            out,
            doc.replace("alice@example.com", "*************.com"),
            "only the address changes, the &quot; around ETags stay as written"
        );
        assert_eq!(counts(&masker), [count("content", "partial", 1)]);
    }

    #[test]
    fn entities_are_decoded_in_masked_text_and_the_output_is_escaped() {
        let m = by_name(r#"["Password"]"#, "partial");
        let (out, _) = xml(&m, "<r><Password>p&amp;ss&#x41;word</Password></r>");
        assert_eq!(out, "<r><Password>*****word</Password></r>");
        assert_eq!(json_masked(&m, "Password", "p&ssAword"), "*****word");

        // The masked value keeps characters that must be escaped again.
        let (out, _) = xml(&m, "<r><Password>xy&lt;b&gt;&amp;c</Password></r>");
        assert_eq!(out, "<r><Password>***b&gt;&amp;c</Password></r>");

        // Hashes are of the decoded text, as the JSON string's.
        let m = by_name(r#"["Password"]"#, "hash");
        let (out, _) = xml(&m, "<r><Password>p&amp;ss&#65;word</Password></r>");
        let hash = json_masked(&m, "Password", "p&ssAword");
        assert_eq!(out, format!("<r><Password>{hash}</Password></r>"));
    }

    #[test]
    fn entities_in_detected_text_are_decoded_then_escaped() {
        let m = detecting(r#"["email"]"#, "redact");
        // A reference cannot hide an address from the detector.
        let (out, masker) = xml(
            &m,
            "<r><Note>mail bob&#64;example.com &amp; &lt;more&gt;</Note></r>",
        );
        assert_eq!(
            out,
            "<r><Note>mail [redacted] &amp; &lt;more&gt;</Note></r>"
        );
        assert_eq!(masker.masked_total(), 1);
        // The rewritten node is written with the characters references stood for.
        let (out, _) = xml(&m, "<r><Note>&#x41;: bob@example.com</Note></r>");
        assert_eq!(out, "<r><Note>A: [redacted]</Note></r>");
        // Line ends are read as XML reads them; a CR from a reference stays one.
        let (out, _) = xml(&m, "<r><Note>a\r\nbob@example.com&#13;</Note></r>");
        assert_eq!(out, "<r><Note>a\n[redacted]&#13;</Note></r>");
        // A node without a hit is not rewritten, entities and all.
        let doc = "<r><Note>a &amp; b &#x41;\r\n</Note><Note>bob@example.com</Note></r>";
        let (out, _) = xml(&m, doc);
        assert_eq!(
            out,
            "<r><Note>a &amp; b &#x41;\r\n</Note><Note>[redacted]</Note></r>"
        );
    }

    #[test]
    fn cdata_is_text_for_masking_and_detection() {
        let m = by_name(r#"["SecretAccessKey"]"#, "hash");
        let (out, _) = xml(
            &m,
            "<r><SecretAccessKey><![CDATA[abc<&>def]]></SecretAccessKey></r>",
        );
        let hash = json_masked(&m, "SecretAccessKey", "abc<&>def");
        assert_eq!(
            out,
            format!("<r><SecretAccessKey>{hash}</SecretAccessKey></r>")
        );

        let m = by_name(r#"["SecretAccessKey"]"#, "partial");
        let (out, _) = xml(
            &m,
            "<r><SecretAccessKey>ab<![CDATA[cd]]>&amp;ef</SecretAccessKey></r>",
        );
        assert_eq!(out, "<r><SecretAccessKey>***d&amp;ef</SecretAccessKey></r>");

        let m = detecting(r#"["email"]"#, "redact");
        // A lone CDATA section stays one.
        let (out, _) = xml(&m, "<r><Key><![CDATA[bob@example.com <x>]]></Key></r>");
        assert_eq!(out, "<r><Key><![CDATA[[redacted] <x>]]></Key></r>");
        // Text and CDATA in a row are one node, written back escaped.
        let (out, masker) = xml(&m, "<r><Key>to: <![CDATA[<bob@example.com>]]></Key></r>");
        assert_eq!(out, "<r><Key>to: &lt;[redacted]&gt;</Key></r>");
        assert_eq!(masker.masked_total(), 1);
        // An address split across text and CDATA is still one address.
        let (out, _) = xml(&m, "<r><Key>bob@<![CDATA[example.com]]></Key></r>");
        assert_eq!(out, "<r><Key>[redacted]</Key></r>");
    }

    #[test]
    fn attribute_values_are_detected_and_escaped_for_their_quotes() {
        let m = detecting(r#"["email"]"#, "redact");
        let doc = concat!(
            r#"<r xmlns="urn:x" xmlns:m="mailto:ops@example.com">"#,
            r#"<Owner email="bob@example.com" id='a&apos;b' "#,
            r#"note='it&apos;s carol@example.org &amp; co' other="it's dan@example.net"/>"#,
            "<Owner spaced=\"x\tdan@example.net\r\ny\" gt=\"a>b eve@example.com\"/>",
            "</r>"
        );
        let (out, masker) = xml(&m, doc);
        assert_eq!(
            out,
            concat!(
                r#"<r xmlns="urn:x" xmlns:m="mailto:ops@example.com">"#,
                r#"<Owner email="[redacted]" id='a&apos;b' "#,
                r#"note='it&apos;s [redacted] &amp; co' other="it's [redacted]"/>"#,
                r#"<Owner spaced="x [redacted] y" gt="a&gt;b [redacted]"/>"#,
                "</r>"
            ),
            "namespace declarations and values without a hit are left as written"
        );
        assert_eq!(counts(&masker), [count("content", "redact", 5)]);

        // Attributes are not columns; a masked element's own attributes are scanned.
        let m = masks(concat!(
            "[[mask]]\nname = \"by-name\"\ncolumns = [\"Password\", \"email\"]\n",
            "[[mask]]\nname = \"content\"\ndetectors = [\"email\"]\n",
        ));
        let (out, masker) = xml(
            &m,
            r#"<r email="bob@example.com"><Password for="bob@example.com">x</Password></r>"#,
        );
        assert_eq!(
            out,
            r#"<r email="[redacted]"><Password for="[redacted]">[redacted]</Password></r>"#
        );
        assert_eq!(
            counts(&masker),
            [count("by-name", "redact", 1), count("content", "redact", 2)]
        );
    }

    #[test]
    fn namespace_prefixes_are_ignored_in_names() {
        let m = by_name(r#"["SecretAccessKey"]"#, "redact");
        let doc = concat!(
            r#"<ns:CreateAccessKeyResponse xmlns:ns="https://iam.amazonaws.com/doc/2010-05-08/">"#,
            "<ns:SecretAccessKey>abc</ns:SecretAccessKey>",
            "<SecretAccessKey:Other>kept</SecretAccessKey:Other>",
            "</ns:CreateAccessKeyResponse>"
        );
        let (out, masker) = xml(&m, doc);
        assert_eq!(
            out,
            doc.replace(">abc<", ">[redacted]<"),
            "the prefix is not the name"
        );
        assert_eq!(masker.masked_total(), 1);
    }

    #[test]
    fn empty_masked_elements_are_left_alone() {
        let m = by_name(r#"["Password"]"#, "redact");
        let mut masker = m.body_masker();
        assert_eq!(
            masker.mask_xml(b"<r><Password/><Password></Password><Password /></r>", None),
            Ok(None)
        );
        assert_eq!(masker.masked_total(), 0);
        let (out, masker) = xml(&m, "<r><Password/><Password> </Password></r>");
        assert_eq!(out, "<r><Password/><Password>[redacted]</Password></r>");
        assert_eq!(masker.masked_total(), 1);
    }

    #[test]
    fn masked_elements_with_children_are_masked_whole() {
        let inner = "\n  <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId><SecretAccessKey>s&amp;k</SecretAccessKey>\n";
        let doc = format!("<r><Credentials a=\"1\">{inner}</Credentials><Other>kept</Other></r>");
        let m = by_name(r#"["Credentials", "SecretAccessKey"]"#, "redact");
        let (out, masker) = xml(&m, &doc);
        assert_eq!(
            out,
            "<r><Credentials a=\"1\">[redacted]</Credentials><Other>kept</Other></r>"
        );
        // One value: nothing inside a masked element is counted apart.
        assert_eq!(counts(&masker), [count("by-name", "redact", 1)]);

        // The strategy reads the content as written, markup included.
        let m = by_name(r#"["Credentials"]"#, "hash");
        let (out, _) = xml(&m, &doc);
        let hash = json_masked(&m, "Credentials", inner);
        assert_eq!(
            out,
            format!("<r><Credentials a=\"1\">{hash}</Credentials><Other>kept</Other></r>")
        );
        let m = by_name(r#"["Credentials"]"#, "partial");
        let (out, _) = xml(&m, "<r><Credentials><a>x</a></Credentials></r>");
        assert_eq!(out, "<r><Credentials>****&lt;/a&gt;</Credentials></r>");
    }

    #[test]
    fn everything_but_masked_values_is_copied_byte_for_byte() {
        let doc = concat!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
            "<!-- by bob@example.com -->\n<?render mode=\"x\"?>\n",
            "<r xmlns:a=\"urn:x\" >\r\n  <a:Key  >bob@example.com</a:Key >\r\n",
            "  <Empty/><!-- c --><Text>bob@example.com<!-- c -->x</Text>\r\n</r >\n<!-- end -->\n"
        );
        let m = detecting(r#"["email"]"#, "redact");
        let (out, masker) = xml(&m, doc);
        assert_eq!(
            out,
            doc.replace(">bob@example.com<", ">[redacted]<"),
            "comments and processing instructions are not scanned"
        );
        assert!(out.starts_with('\u{feff}'));
        assert_eq!(masker.masked_total(), 2);
    }

    #[test]
    fn counts_per_rule_as_mask_json() {
        let m = masks(concat!(
            "[[mask]]\nname = \"by-name\"\ncolumns = [\"*email*\", \"password\"]\n",
            "[[mask]]\nname = \"content\"\ndetectors = [\"email\", \"credit_card\"]\n",
            "strategy = \"partial\"\n",
        ));
        let (out, masker) = xml(
            &m,
            concat!(
                "<r><Email>a@b.co</Email><password>x</password>",
                "<n1>bob@example.com, carol@example.com</n1><n2>4111 1111 1111 1111</n2>",
                "<n3>plain</n3></r>"
            ),
        );
        assert_eq!(
            out,
            concat!(
                "<r><Email>[redacted]</Email><password>[redacted]</password>",
                "<n1>***********.com, *************.com</n1><n2>***************1111</n2>",
                "<n3>plain</n3></r>"
            )
        );
        let mut json = m.body_masker();
        json.mask_json(
            br#"{"Email": "a@b.co", "password": "x", "n1": "bob@example.com, carol@example.com", "n2": "4111 1111 1111 1111", "n3": "plain"}"#,
            None,
        )
        .expect("JSON");
        assert_eq!(masker.masked(), json.masked());
        assert_eq!(
            counts(&masker),
            [
                count("by-name", "redact", 2),
                count("content", "partial", 2)
            ]
        );
        assert_eq!(masker.masked_total(), 4);
    }

    #[test]
    fn unchanged_documents_are_not_copied() {
        let m = masks(concat!(
            "[[mask]]\nname = \"by-name\"\ncolumns = [\"Password\"]\n",
            "[[mask]]\nname = \"content\"\ndetectors = [\"email\", \"credit_card\"]\n",
        ));
        let mut masker = m.body_masker();
        assert_eq!(masker.mask_xml(IAM.as_bytes(), None), Ok(None));
        assert_eq!(
            masker.mask_xml(
                b"<?xml version='1.0'?><r a='&amp;'>x &lt; y<![CDATA[z]]></r>",
                Some(b"secret")
            ),
            Ok(None)
        );
        assert_eq!(masker.masked_total(), 0);
        assert_eq!(masker.secret_echoes(), 0);
        assert_eq!(
            SessionMasks::none()
                .body_masker()
                .mask_xml(IAM.as_bytes(), None),
            Ok(None)
        );
    }

    #[test]
    fn the_injected_secret_is_masked_in_text_cdata_and_attributes() {
        let m = SessionMasks::none();
        let mut masker = m.body_masker();
        let out = masker
            .mask_xml(
                br#"<r a="Bearer tok-123"><Echo>Bearer tok-123 and tok&#45;123</Echo><![CDATA[tok-123]]></r>"#,
                Some(b"tok-123"),
            )
            .expect("XML")
            .expect("masked");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                r#"<r a="Bearer {SECRET_MASK}"><Echo>Bearer {SECRET_MASK} and {SECRET_MASK}</Echo><![CDATA[{SECRET_MASK}]]></r>"#
            )
        );
        assert_eq!(masker.secret_echoes(), 4);
        assert_eq!(masker.masked_total(), 0);

        // Inside an element masked whole, the rule masks it: no echo is counted.
        let m = by_name(r#"["SecretAccessKey"]"#, "redact");
        let mut masker = m.body_masker();
        let out = masker
            .mask_xml(
                b"<r><SecretAccessKey>tok-123</SecretAccessKey></r>",
                Some(b"tok-123"),
            )
            .expect("XML")
            .expect("masked");
        assert_eq!(out, b"<r><SecretAccessKey>[redacted]</SecretAccessKey></r>");
        assert_eq!(masker.secret_echoes(), 0);
        assert_eq!(masker.masked_total(), 1);
        // An empty secret is no secret.
        assert_eq!(masker.mask_xml(b"<r>x</r>", Some(b"")), Ok(None));
    }

    #[test]
    fn malformed_documents_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (b"<a><b></a></b>", "expected `</b>`, but `</a>` was found"),
            (b"<a><b></b>", "unclosed element"),
            (b"<a>", "unclosed element"),
            (b"</a>", "does not match any open tag"),
            (b"<a", "tag not closed"),
            (b"<a>&foo;</a>", "undefined entity"),
            (b"<a>&#0;</a>", "invalid character reference"),
            (b"<a>&#x1;</a>", "invalid character reference"),
            (b"<a>&#xZZ;</a>", "invalid character reference"),
            (b"<a>&#;</a>", "invalid character reference"),
            (b"<a>&#x110000;</a>", "invalid character reference"),
            (b"<a>x & y</a>", "reference not closed"),
            (b"<a>&amp</a>", "reference not closed"),
            (b"<a b=\"&foo;\"/>", "undefined entity"),
            (b"<a b=\"x & y\"/>", "starts no reference"),
            (b"<a b=\"x<y\"/>", "`<`"),
            (b"<a b=\"1\" b=\"2\"/>", "duplicated attribute"),
            (b"<a b=x/>", "attribute"),
            (b"<a b/>", "attribute"),
            (b"<a><!-- x -- y --></a>", "`--`"),
            (b"<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>", "DOCTYPE"),
            (b"<!DOCTYPE a><a/>", "DOCTYPE"),
            (
                b"<?xml version=\"1.0\"?><!DOCTYPE a SYSTEM \"x.dtd\"><a/>",
                "DOCTYPE",
            ),
            (b"<a/><b/>", "more than one root"),
            (b"<a/>text", "outside the root"),
            (b"text<a/>", "outside the root"),
            (b"<a/>&amp;", "outside the root"),
            (b"<![CDATA[x]]><a/>", "outside the root"),
            (b"", "no root"),
            (b" \n", "no root"),
            (b"<!-- only a comment -->", "no root"),
            (b"<a>\xff</a>", "not UTF-8"),
            (b"\xff\xfe<\x00a\x00/\x00>\x00", "not UTF-8"),
            (
                b" <?xml version=\"1.0\"?><a/>",
                "declaration not at the start",
            ),
            (
                b"<a/><?xml version=\"1.0\"?>",
                "declaration not at the start",
            ),
            (
                b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>",
                "encoding",
            ),
            (
                b"<?xml version=\"1.0\" encoding=\"UTF-16\"?><a/>",
                "encoding",
            ),
        ];
        for (doc, why) in cases {
            let got = refused(doc);
            assert!(
                got.contains(why),
                "{:?}: {got:?} does not say {why:?}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn a_refused_document_counts_nothing() {
        let m = masks(concat!(
            "[[mask]]\nname = \"by-name\"\ncolumns = [\"SecretAccessKey\"]\n",
            "[[mask]]\nname = \"content\"\ndetectors = [\"email\"]\n",
        ));
        let mut masker = m.body_masker();
        let doc = b"<r a=\"tok\"><SecretAccessKey>k</SecretAccessKey><e>bob@example.com</e></x>";
        assert!(masker.mask_xml(doc, Some(b"tok")).is_err());
        assert_eq!(masker.masked_total(), 0);
        assert_eq!(masker.secret_echoes(), 0);
        // Counts of earlier documents stay.
        xml_into(&mut masker, "<r><SecretAccessKey>k</SecretAccessKey></r>");
        assert!(masker.mask_xml(doc, Some(b"tok")).is_err());
        assert_eq!(masker.masked_total(), 1);
    }

    fn xml_into(masker: &mut BodyMasker, doc: &str) {
        masker
            .mask_xml(doc.as_bytes(), None)
            .expect("XML")
            .expect("masked");
    }

    #[test]
    fn nesting_is_bounded_as_for_json() {
        let deep = |n: usize| format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
        let m = SessionMasks::none();
        assert_eq!(
            m.body_masker()
                .mask_xml(deep(super::MAX_DEPTH).as_bytes(), None),
            Ok(None)
        );
        let why = refused(deep(super::MAX_DEPTH + 1).as_bytes());
        assert!(why.contains("nested deeper than 128"), "{why}");
        let why = refused(format!("{}<a/>{}", "<a>".repeat(128), "</a>".repeat(128)).as_bytes());
        assert!(why.contains("nested deeper"), "{why}");
        let why = refused(deep(100_000).as_bytes());
        assert!(why.contains("nested deeper"), "{why}");
    }

    #[test]
    fn error_positions_count_from_the_document_start() {
        let why = refused(b"\xEF\xBB\xBF<a>&foo;</a>");
        assert!(why.ends_with("(byte 6)"), "{why}");
        assert_eq!(NotXml("x".into()).to_string(), "not well-formed XML: x");
    }
}
