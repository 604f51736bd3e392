//! ITI-20 over syslog: an audit record as an RFC 5424 message carrying the DICOM audit
//! XML, framed for TLS transport by RFC 5425 octet counting.
//!
//! Header per IHE ITI TF-2 3.20.4.2: PRI with facility 10 (security/authorization) and
//! severity 5 (notice), MSGID `IHE+RFC-3881`, the event's own time as TIMESTAMP, MSG as
//! UTF-8 with a byte order mark. Structured data names the record, so a receiver can
//! deduplicate what at-least-once delivery sends twice and see gaps: `meta sequenceId`
//! (RFC 5424 §7.3.1: the event's place in its hash chain), `tessera@32473 eventId` (the
//! stable event id) and `chain` (the instance's chain it is in; 32473 is the private
//! enterprise number RFC 5612 sets aside for examples and documentation).

use crate::{timestamp, to_dicom_xml, Record};

/// facility 10 × 8 + severity 5.
const PRI: u8 = 85;
pub const MSGID: &str = "IHE+RFC-3881";
const BOM: &str = "\u{feff}";

/// Who is sending: the RFC 5424 HOSTNAME, APP-NAME and PROCID fields.
#[derive(Debug, Clone)]
pub struct Sender {
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
}

/// The RFC 5424 message for `record`, the `seq`th of the hash chain `chain`.
pub fn message(record: &Record, chain: &str, seq: i64, sender: &Sender) -> String {
    format!(
        "<{PRI}>1 {} {} {} {} {MSGID} [meta sequenceId=\"{seq}\"][tessera@32473 eventId=\"{}\" chain=\"{}\"] {BOM}{}",
        timestamp(record.recorded),
        header_field(&sender.hostname, 255),
        header_field(&sender.app_name, 48),
        header_field(&sender.procid, 128),
        param_value(&record.id),
        param_value(chain),
        to_dicom_xml(record),
    )
}

/// RFC 5425 framing: `MSG-LEN SP SYSLOG-MSG`, the length in octets.
pub fn frame(message: &str) -> Vec<u8> {
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message.as_bytes());
    framed
}

/// A header field: printable US-ASCII without spaces, at most `max` characters; `-`
/// when nothing is left.
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() {
        "-".into()
    } else {
        field
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 §6.3.3).
fn param_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::issued;

    fn sender() -> Sender {
        Sender {
            hostname: "node-1.tessera.example".into(),
            app_name: "tessera".into(),
            procid: "4242".into(),
        }
    }

    #[test]
    fn the_header_follows_iti_20() {
        let record = issued();
        let message = message(&record, "node-1:8443", 17, &sender());
        let expected_head = format!(
            "<85>1 {} node-1.tessera.example tessera 4242 IHE+RFC-3881 \
             [meta sequenceId=\"17\"][tessera@32473 eventId=\"{}\" chain=\"node-1:8443\"] \u{feff}<?xml",
            timestamp(record.recorded),
            record.id
        );
        assert!(message.starts_with(&expected_head), "{message}");
        assert!(message.ends_with(&to_dicom_xml(&record)));
    }

    #[test]
    fn octet_counting_counts_bytes_not_characters() {
        let framed = frame("<85>1 - - - - IHE+RFC-3881 - \u{feff}é");
        let text = String::from_utf8(framed).unwrap();
        let (len, rest) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert_eq!(rest.len(), rest.chars().count() + 2 + 1);
    }

    #[test]
    fn header_fields_and_params_cannot_break_the_syntax() {
        let odd = Sender {
            hostname: "two words".into(),
            app_name: "".into(),
            procid: "x".repeat(200),
        };
        let mut record = issued();
        record.id = "a\"b]c\\d".into();
        let message = message(&record, "]", 1, &odd);
        let fields: Vec<&str> = message.splitn(8, ' ').collect();
        assert_eq!(fields[2], "twowords");
        assert_eq!(fields[3], "-");
        assert_eq!(fields[4].len(), 128);
        assert!(message.contains("eventId=\"a\\\"b\\]c\\\\d\" chain=\"\\]\""));
    }
}
