//! Masking the values of Secrets in API answers, keeping every answer a valid object of
//! its type: each value of `data` becomes the base64 of [`MASK`] (a typed client still
//! decodes it as bytes), each value of `stringData` becomes [`MASK`], and the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation (a copy of the whole
//! object as `kubectl apply` saw it) becomes [`MASK`]. Keys stay, so a bot still sees
//! which keys a Secret has.
//!
//! Applied to every JSON document answering a request about `secrets` (an object, a
//! `SecretList`'s items, a `Table`'s row objects, each event of a watch): any object
//! whose `data` member is an object of strings is taken for a Secret.
use base64::Engine;
use serde_json::Value;

/// What a Secret's value is replaced with.
pub const MASK: &str = "[redacted by nhi-agent]";

/// The annotation that holds a copy of the object `kubectl apply` applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Masks one JSON document (see the module documentation): `Ok(None)` when it holds
/// no Secret value, else the new document and how many values were masked.
pub fn mask_values(doc: &[u8]) -> Result<Option<(Vec<u8>, u64)>, String> {
    let mut value: Value = serde_json::from_slice(doc).map_err(|e| e.to_string())?;
    let masked = walk(&mut value);
    if masked == 0 {
        return Ok(None);
    }
    let out = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    Ok(Some((out, masked)))
}

fn walk(value: &mut Value) -> u64 {
    // serde_json refuses documents nested deeper than 128 levels, so this recursion is
    // bounded.
    let mut masked = 0;
    match value {
        Value::Object(object) => {
            let secret_like = object
                .get("data")
                .and_then(Value::as_object)
                .is_some_and(|d| d.values().all(|v| v.is_string() || v.is_null()));
            if secret_like {
                let encoded = base64::engine::general_purpose::STANDARD.encode(MASK);
                if let Some(Value::Object(data)) = object.get_mut("data") {
                    for v in data.values_mut().filter(|v| v.is_string()) {
                        *v = Value::String(encoded.clone());
                        masked += 1;
                    }
                }
            }
            if let Some(Value::Object(data)) = object.get_mut("stringData") {
                for v in data.values_mut().filter(|v| v.is_string()) {
                    *v = Value::String(MASK.into());
                    masked += 1;
                }
            }
            if let Some(Value::Object(annotations)) = object.get_mut("annotations") {
                if let Some(v) = annotations.get_mut(LAST_APPLIED) {
                    *v = Value::String(MASK.into());
                    masked += 1;
                }
            }
            for (key, v) in object.iter_mut() {
                if secret_like && key == "data" {
                    continue;
                }
                masked += walk(v);
            }
        }
        Value::Array(items) => {
            for v in items {
                masked += walk(v);
            }
        }
        _ => {}
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(doc: &str) -> (Value, u64) {
        let (out, n) = mask_values(doc.as_bytes())
            .unwrap()
            .expect("something masked");
        (serde_json::from_slice(&out).unwrap(), n)
    }

    #[test]
    fn secret_values_are_masked_and_stay_valid() {
        let (v, n) = masked(
            r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{\"password\":\"czNjcjN0\"}}","team":"a"}},"type":"Opaque","data":{"username":"YXBw","password":"czNjcjN0"},"stringData":{"token":"t0k3n"}}"#,
        );
        assert_eq!(n, 4);
        let encoded = base64::engine::general_purpose::STANDARD.encode(MASK);
        assert_eq!(v["data"]["username"], encoded.as_str());
        assert_eq!(v["data"]["password"], encoded.as_str());
        assert_eq!(v["stringData"]["token"], MASK);
        assert_eq!(v["metadata"]["annotations"][LAST_APPLIED], MASK);
        assert_eq!(v["metadata"]["annotations"]["team"], "a");
        assert_eq!(v["metadata"]["name"], "db");
        // What a typed client decodes.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v["data"]["password"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, MASK.as_bytes());
    }

    #[test]
    fn lists_tables_and_watch_events_are_masked_too() {
        let (v, n) = masked(
            r#"{"kind":"SecretList","items":[{"metadata":{"name":"a"},"data":{"k":"djE="}},{"metadata":{"name":"b"},"data":{}}]}"#,
        );
        assert_eq!(n, 1);
        assert_ne!(v["items"][0]["data"]["k"], "djE=");
        let (v, _) = masked(r#"{"type":"ADDED","object":{"kind":"Secret","data":{"k":"djE="}}}"#);
        assert_ne!(v["object"]["data"]["k"], "djE=");
        let (v, _) = masked(
            r#"{"kind":"Table","rows":[{"cells":["a","Opaque",1,"1m"],"object":{"kind":"Secret","data":{"k":"djE="}}}]}"#,
        );
        assert_ne!(v["rows"][0]["object"]["data"]["k"], "djE=");
    }

    #[test]
    fn documents_without_secret_values_are_left_alone() {
        for doc in [
            r#"{"kind":"Status","status":"Success"}"#,
            r#"{"kind":"SecretList","items":[]}"#,
            r#"{"kind":"Table","rows":[{"cells":["a","Opaque",1],"object":{"kind":"PartialObjectMetadata","metadata":{"name":"a"}}}]}"#,
            r#"{"data":[1,2]}"#,
        ] {
            assert_eq!(mask_values(doc.as_bytes()).unwrap(), None, "{doc}");
        }
        assert!(mask_values(b"{not json").is_err());
    }
}
