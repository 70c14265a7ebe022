//! Payload packets as the official SDK sends them, and their JSON values.

/// The JSON value of a payload packet, by its `payloadType`:
/// `application/json` is JSON, `application/super+json` is SuperJSON (the
/// value under `json`), `text/plain` is a string, and no payload is `null`.
pub(crate) fn to_json(
    payload: Option<&str>,
    payload_type: &str,
) -> Result<serde_json::Value, String> {
    let Some(text) = payload else {
        return Ok(serde_json::Value::Null);
    };
    match payload_type {
        "application/json" => {
            serde_json::from_str(text).map_err(|e| format!("the payload is not valid JSON: {e}"))
        }
        "application/super+json" => {
            let mut value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("the payload is not valid SuperJSON: {e}"))?;
            Ok(value
                .get_mut("json")
                .map(serde_json::Value::take)
                .unwrap_or(serde_json::Value::Null))
        }
        "text/plain" => Ok(serde_json::Value::String(text.to_string())),
        other => Err(format!(
            "payloadType `{other}` is not supported; use application/json, application/super+json or text/plain"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_each_packet_type() {
        assert_eq!(to_json(None, "application/json").unwrap(), json!(null));
        assert_eq!(
            to_json(Some(r#"{"a":1}"#), "application/json").unwrap(),
            json!({"a":1})
        );
        assert_eq!(
            to_json(
                Some(r#"{"json":{"a":1},"meta":{}}"#),
                "application/super+json"
            )
            .unwrap(),
            json!({"a":1})
        );
        assert_eq!(to_json(Some("hi"), "text/plain").unwrap(), json!("hi"));
        assert!(
            to_json(Some("{"), "application/json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(to_json(Some("x"), "application/xml").is_err());
    }
}
