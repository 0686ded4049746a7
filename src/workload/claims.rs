//! JWT claims (JSON) as the `google.protobuf.Struct` that
//! `ValidateJWTSVID` answers with.

use prost_types::{value::Kind, ListValue, Struct, Value};

/// `claims` as a Struct; a claims set that is not an object gives an
/// empty one.
pub fn to_struct(claims: &serde_json::Value) -> Struct {
    let fields = claims
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), value(v))).collect())
        .unwrap_or_default();
    Struct { fields }
}

fn value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(to_struct(v)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_keep_their_shape() {
        let s = to_struct(&serde_json::json!({
            "sub": "spiffe://td/x", "aud": ["db"], "exp": 17, "rkt": {"app": null, "ok": true}
        }));
        assert_eq!(
            s.fields["sub"].kind,
            Some(Kind::StringValue("spiffe://td/x".into()))
        );
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
            panic!("aud is a list");
        };
        assert_eq!(aud.values[0].kind, Some(Kind::StringValue("db".into())));
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(17.0)));
        let Some(Kind::StructValue(rkt)) = &s.fields["rkt"].kind else {
            panic!("rkt is a struct");
        };
        assert_eq!(rkt.fields["app"].kind, Some(Kind::NullValue(0)));
        assert_eq!(rkt.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert!(to_struct(&serde_json::json!("x")).fields.is_empty());
    }
}
