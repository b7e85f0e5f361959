//! Mapping between the contract's header values and AMQP field tables.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use warren_core::HeaderValue;

pub(crate) fn to_field_table<'a>(
    headers: impl IntoIterator<Item = (&'a String, &'a HeaderValue)>,
) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        let value = match v {
            HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
            HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
            HeaderValue::Bytes(b) => AMQPValue::ByteArray(b.clone().into()),
            // `Other` only exists on the way in; publishing one is a caller's test fixture
            // asking for a non-contract type, and a boolean is the simplest such type.
            HeaderValue::Other(_) => AMQPValue::Boolean(true),
        };
        table.insert(ShortString::from(k.as_str()), value);
    }
    table
}

pub(crate) fn from_field_table(table: Option<&FieldTable>) -> BTreeMap<String, HeaderValue> {
    let Some(table) = table else {
        return BTreeMap::new();
    };
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
        .collect()
}

fn from_amqp(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => match i64::try_from(*t) {
            Ok(i) => HeaderValue::Int(i),
            Err(_) => HeaderValue::Other("timestamp"),
        },
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(s) => HeaderValue::Str(s.to_owned()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Boolean(_) => HeaderValue::Other("boolean"),
        AMQPValue::Float(_) | AMQPValue::Double(_) => HeaderValue::Other("float"),
        AMQPValue::DecimalValue(_) => HeaderValue::Other("decimal"),
        AMQPValue::FieldArray(_) => HeaderValue::Other("array"),
        AMQPValue::FieldTable(_) => HeaderValue::Other("table"),
        AMQPValue::Void => HeaderValue::Other("void"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_amqp_integer_width_reads_as_an_integer() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::ShortShortUInt(3));
        t.insert("b".into(), AMQPValue::LongInt(-4));
        t.insert(
            "c".into(),
            AMQPValue::LongString(LongString::from(b"x".to_vec())),
        );
        t.insert("d".into(), AMQPValue::Double(1.5));
        let h = from_field_table(Some(&t));
        assert_eq!(h["a"], HeaderValue::Int(3));
        assert_eq!(h["b"], HeaderValue::Int(-4));
        assert_eq!(h["c"], HeaderValue::Str("x".into()));
        assert_eq!(h["d"], HeaderValue::Other("float"));
    }

    #[test]
    fn round_trip_of_contract_types() {
        let src: BTreeMap<String, HeaderValue> = [
            ("s".to_owned(), HeaderValue::Str("v".into())),
            ("i".to_owned(), HeaderValue::Int(i64::MAX)),
            ("b".to_owned(), HeaderValue::Bytes(vec![0, 255])),
        ]
        .into();
        assert_eq!(from_field_table(Some(&to_field_table(&src))), src);
    }
}
