//! AWS-shaped errors: what the agent answers when it refuses a call (so an SDK reports
//! `AccessDenied` and the agent's reason like any other AWS error, instead of failing
//! to parse a foreign body), and what a response says about itself (its error code and
//! the request id that joins the journal to CloudTrail).
use super::action::ApiProtocol;

/// An error response the agent makes: status, content type, extra headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// An error in the shape `protocol`'s SDKs parse: the query protocol's
/// `<ErrorResponse>` (IAM, STS, EC2-style), S3's `<Error>`, the JSON protocols'
/// `__type` with `x-amzn-ErrorType`. `code` is the error code (`AccessDenied`; JSON
/// protocols get the `…Exception` spelling their SDKs map), `request_id` the agent's
/// own id for this answer (journaled with it).
pub fn error_response(
    protocol: ApiProtocol,
    status: u16,
    code: &str,
    message: &str,
    request_id: &str,
) -> ErrorResponse {
    let message_xml = xml_escape(message);
    let code_xml = xml_escape(code);
    let id_xml = xml_escape(request_id);
    match protocol {
        ApiProtocol::Query => ErrorResponse {
            status,
            content_type: "text/xml",
            headers: vec![("x-amzn-requestid", request_id.to_owned())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse><Error><Type>Sender</Type><Code>{code_xml}</Code><Message>{message_xml}</Message></Error><RequestId>{id_xml}</RequestId></ErrorResponse>"
            )
            .into_bytes(),
        },
        ApiProtocol::RestXml => ErrorResponse {
            status,
            content_type: "application/xml",
            headers: vec![("x-amz-request-id", request_id.to_owned())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code_xml}</Code><Message>{message_xml}</Message><RequestId>{id_xml}</RequestId></Error>"
            )
            .into_bytes(),
        },
        ApiProtocol::Json | ApiProtocol::RestJson => {
            let code = json_code(code);
            ErrorResponse {
                status,
                content_type: if protocol == ApiProtocol::Json {
                    "application/x-amz-json-1.1"
                } else {
                    "application/json"
                },
                headers: vec![
                    ("x-amzn-requestid", request_id.to_owned()),
                    ("x-amzn-errortype", code.clone()),
                ],
                body: serde_json::json!({ "__type": code, "message": message, "Message": message })
                    .to_string()
                    .into_bytes(),
            }
        }
    }
}

/// JSON protocols name access errors `AccessDeniedException`.
fn json_code(code: &str) -> String {
    match code {
        "AccessDenied" => "AccessDeniedException".into(),
        other => other.into(),
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The request id AWS gave a response (`x-amzn-RequestId`, `x-amz-request-id`), from
/// its headers (name, value; any case).
pub fn request_id<'a>(headers: &[(&'a str, &'a str)]) -> Option<&'a str> {
    ["x-amzn-requestid", "x-amz-request-id"]
        .iter()
        .find_map(|want| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(want))
                .map(|(_, v)| *v)
        })
}

/// A response's AWS error code: the `x-amzn-ErrorType` header (before any `:`), else
/// the body's JSON `__type` / `code` (after any `#`), else the first `<Code>` of an
/// XML body. `None` for a success or a body that names none.
pub fn error_code(headers: &[(&str, &str)], body: Option<&[u8]>) -> Option<String> {
    if let Some((_, v)) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amzn-errortype"))
    {
        let code = v.split(':').next().unwrap_or(v).trim();
        if !code.is_empty() {
            return Some(code.to_owned());
        }
    }
    let body = body?;
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    match body[start] {
        b'{' => {
            let value: serde_json::Value = serde_json::from_slice(body).ok()?;
            let code = value
                .get("__type")
                .or_else(|| value.get("code"))
                .or_else(|| value.get("Code"))?
                .as_str()?;
            let code = code.rsplit('#').next().unwrap_or(code);
            (!code.is_empty()).then(|| code.to_owned())
        }
        b'<' => xml_code(&body[start..]),
        _ => None,
    }
}

/// The text of the first `Code` element (namespace prefix ignored) of an XML document
/// whose root is `Error` or `ErrorResponse`.
fn xml_code(xml: &[u8]) -> Option<String> {
    use quick_xml::events::Event;
    let xml = std::str::from_utf8(xml).ok()?;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut root = false;
    let mut in_code = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                let name = e.local_name();
                let name: &str = name.as_ref();
                if !root {
                    if name != "Error" && name != "ErrorResponse" {
                        return None;
                    }
                    root = true;
                }
                in_code = name == "Code";
            }
            Event::Text(t) if in_code => {
                let text = t.xml10_content();
                let code = text.trim();
                return (!code.is_empty()).then(|| code.to_owned());
            }
            Event::End(_) => in_code = false,
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_parse_back_as_the_code_given() {
        for protocol in [
            ApiProtocol::Query,
            ApiProtocol::RestXml,
            ApiProtocol::Json,
            ApiProtocol::RestJson,
        ] {
            let e = error_response(
                protocol,
                403,
                "AccessDenied",
                "nhi-agent: call refused by policy rule \"no <iam> & co\"",
                "nhi-1-2",
            );
            assert_eq!(e.status, 403);
            let headers: Vec<(&str, &str)> =
                e.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let code = error_code(&[], Some(&e.body)).unwrap();
            let expected = match protocol {
                ApiProtocol::Json | ApiProtocol::RestJson => "AccessDeniedException",
                _ => "AccessDenied",
            };
            assert_eq!(code, expected, "{protocol:?}");
            assert_eq!(request_id(&headers), Some("nhi-1-2"));
            let text = String::from_utf8(e.body).unwrap();
            assert!(text.contains("no "), "{text}");
            if matches!(protocol, ApiProtocol::Query | ApiProtocol::RestXml) {
                assert!(text.contains("&lt;iam&gt; &amp; co"), "{text}");
            }
        }
    }

    #[test]
    fn error_codes_of_aws_responses() {
        assert_eq!(
            error_code(
                &[(
                    "X-Amzn-ErrorType",
                    "ResourceNotFoundException:http://internal.amazon.com/"
                )],
                None
            )
            .as_deref(),
            Some("ResourceNotFoundException")
        );
        assert_eq!(
            error_code(
                &[],
                Some(br#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","message":"x"}"#)
            )
            .as_deref(),
            Some("ResourceNotFoundException")
        );
        let iam = br#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <Error><Type>Sender</Type><Code>NoSuchEntity</Code><Message>The user with name x cannot be found.</Message></Error>
  <RequestId>4f1f1b52-1b52-4f1f-1b52-4f1f1b524f1f</RequestId></ErrorResponse>"#;
        assert_eq!(error_code(&[], Some(iam)).as_deref(), Some("NoSuchEntity"));
        let s3 = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>m</Message></Error>";
        assert_eq!(error_code(&[], Some(s3)).as_deref(), Some("NoSuchKey"));
        // A success document that happens to hold a Code element is not an error.
        let ok = b"<ListResult><Code>x</Code></ListResult>";
        assert_eq!(error_code(&[], Some(ok)), None);
        assert_eq!(error_code(&[], Some(b"{\"Users\":[]}")), None);
        assert_eq!(error_code(&[], Some(b"binary\x00")), None);
        assert_eq!(
            request_id(&[("x-amz-request-id", "ABC"), ("x-amzn-RequestId", "DEF")]),
            Some("DEF")
        );
    }
}
