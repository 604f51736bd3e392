//! Tessera's outgoing calls, apart from the inbound HTTP server: ITI-20 delivery of the
//! audit trail (syslog over TLS, the FHIR feed), the gateway's introspection client, and
//! the fetching of clients' `jwks_uri` key sets.

pub mod delivery;
pub mod gateway;
pub mod jwks;
pub mod tls;
