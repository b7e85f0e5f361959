//! Mapping between the contract's header values and AMQP field tables, and the one broker
//! header Warren reads beyond the contract: `x-death`, where RabbitMQ says why it
//! dead-lettered a message.

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

/// What RabbitMQ says about the last time it dead-lettered a message: the first entry of its
/// `x-death` header (the broker keeps the most recent entry first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Death {
    /// Why: `delivery_limit` (a crash loop), `rejected`, `expired` or `maxlen`.
    pub reason: String,
    /// How many times the message was dead-lettered from `queue` for this reason.
    pub count: i64,
    /// The RabbitMQ queue it was dead-lettered from, e.g. `warren.q.default`.
    pub queue: String,
    /// The routing keys it was first published with: for a Warren job, its Warren queue.
    pub routing_keys: Vec<String>,
}

/// Reads the first entry of `x-death`, if the header is there and is a table array. Fields
/// of an unexpected type are left empty rather than failing: this is for people and for the
/// reconciler's reason text, never for a decision that needs them.
pub(crate) fn death_of(table: Option<&FieldTable>) -> Option<Death> {
    let value = table?.inner().get("x-death")?;
    let AMQPValue::FieldArray(entries) = value else {
        return None;
    };
    let AMQPValue::FieldTable(first) = entries.as_slice().first()? else {
        return None;
    };
    let text = |v: Option<&AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    };
    let fields = first.inner();
    let count = match fields.get("count").map(from_amqp) {
        Some(HeaderValue::Int(i)) => i,
        _ => 0,
    };
    let routing_keys = match fields.get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => {
            keys.as_slice().iter().map(|k| text(Some(k))).collect()
        }
        _ => Vec::new(),
    };
    Some(Death {
        reason: text(fields.get("reason")),
        count,
        queue: text(fields.get("queue")),
        routing_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn the_first_x_death_entry_is_read_and_other_shapes_are_ignored() {
        let mut entry = FieldTable::default();
        entry.insert(
            "reason".into(),
            AMQPValue::LongString(b"delivery_limit".to_vec().into()),
        );
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        entry.insert(
            "queue".into(),
            AMQPValue::LongString(b"w.q.default".to_vec().into()),
        );
        entry.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                b"default".to_vec().into(),
            )])),
        );
        let mut older = FieldTable::default();
        older.insert(
            "reason".into(),
            AMQPValue::LongString(b"rejected".to_vec().into()),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(entry),
                AMQPValue::FieldTable(older),
            ])),
        );
        let death = death_of(Some(&headers)).expect("x-death is read");
        assert_eq!(death.reason, "delivery_limit");
        assert_eq!(death.count, 1);
        assert_eq!(death.queue, "w.q.default");
        assert_eq!(death.routing_keys, vec!["default".to_owned()]);

        let mut odd = FieldTable::default();
        odd.insert("x-death".into(), AMQPValue::Boolean(true));
        assert_eq!(death_of(Some(&odd)), None);
        assert_eq!(death_of(None), None);
    }

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
