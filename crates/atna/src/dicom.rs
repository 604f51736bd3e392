//! The DICOM PS3.15 audit message (the XML an ATNA syslog message carries).

use std::fmt::Write as _;

use crate::shape::{audit_source, escape};
use crate::{timestamp, Event, Record};

/// The record as a DICOM `AuditMessage` document.
pub fn to_dicom_xml(record: &Record) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AuditMessage>\n");
    let Event::TokenRequest {
        client_id,
        token_id,
        token_endpoint,
        request,
        ..
    } = &record.event
    else {
        if let Some(shape) = record.shape() {
            shape.to_dicom(record, &mut xml);
        }
        xml.push_str("</AuditMessage>\n");
        return xml;
    };
    let _ = writeln!(
                xml,
                "  <EventIdentification EventActionCode=\"E\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{}\">",
                timestamp(record.recorded),
                record.outcome.code()
            );
    xml.push_str("    <EventID csd-code=\"110114\" codeSystemName=\"DCM\" originalText=\"User Authentication\"/>\n");
    xml.push_str("    <EventTypeCode csd-code=\"ITI-71\" codeSystemName=\"IHE Transactions\" originalText=\"Get Access Token\"/>\n");
    xml.push_str("  </EventIdentification>\n");
    let address = record.client_address.as_deref().map(|a| {
        format!(
            " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"",
            escape(a)
        )
    });
    let _ = writeln!(
        xml,
        "  <ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\"{}>",
        escape(client_id.as_deref().unwrap_or("unknown")),
        address.unwrap_or_default()
    );
    xml.push_str("    <RoleIDCode csd-code=\"110150\" codeSystemName=\"DCM\" originalText=\"Application\"/>\n");
    xml.push_str("  </ActiveParticipant>\n");
    let _ = writeln!(
        xml,
        "  <ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\">",
        escape(token_endpoint)
    );
    xml.push_str("    <RoleIDCode csd-code=\"110152\" codeSystemName=\"DCM\" originalText=\"Destination Role ID\"/>\n");
    xml.push_str("  </ActiveParticipant>\n");
    audit_source(record, &mut xml);
    xml.push_str("  <ParticipantObjectIdentification ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"24\" ParticipantObjectID=\"token-request\">\n");
    xml.push_str("    <ParticipantObjectIDTypeCode csd-code=\"ITI-71\" codeSystemName=\"IHE Transactions\" originalText=\"Get Access Token\"/>\n");
    let _ = writeln!(
        xml,
        "    <ParticipantObjectQuery>{}</ParticipantObjectQuery>",
        base64(request)
    );
    xml.push_str("  </ParticipantObjectIdentification>\n");
    if let Some(jti) = token_id {
        let _ = writeln!(
                    xml,
                    "  <ParticipantObjectIdentification ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"13\" ParticipantObjectID=\"{}\">",
                    escape(jti)
                );
        xml.push_str("    <ParticipantObjectIDTypeCode csd-code=\"access-token\" codeSystemName=\"OAuth\" originalText=\"Access Token jti\"/>\n");
        let _ = writeln!(
            xml,
            "    <ParticipantObjectName>{}</ParticipantObjectName>",
            escape(jti)
        );
        xml.push_str("  </ParticipantObjectIdentification>\n");
    }
    xml.push_str("</AuditMessage>\n");
    xml
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dicom_message_carries_the_same_facts() {
        let xml = to_dicom_xml(&crate::tests::issued());
        assert!(xml.contains("EventOutcomeIndicator=\"0\""));
        assert!(xml.contains("EventDateTime=\"2026-11-23T01:04:50Z\""));
        assert!(xml.contains("<EventID csd-code=\"110114\""));
        assert!(xml.contains("<EventTypeCode csd-code=\"ITI-71\""));
        assert!(xml.contains(
            "UserID=\"bestclinic-tcu\" UserIsRequestor=\"true\" NetworkAccessPointID=\"192.0.2.7\""
        ));
        assert!(xml.contains("ParticipantObjectID=\"3ZCRX77v-XmgKziJgvtSjg\""));
        assert!(xml.ends_with("</AuditMessage>\n"));
    }

    #[test]
    fn values_are_escaped() {
        let mut record = crate::tests::issued();
        record.observer = "a<b>&\"c\"".into();
        let xml = to_dicom_xml(&record);
        assert!(
            xml.contains("AuditSourceID=\"a&lt;b&gt;&amp;&quot;c&quot;\""),
            "{xml}"
        );
    }
}
