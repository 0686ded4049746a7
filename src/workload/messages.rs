//! The SPIFFE Workload API's messages (SPIFFE Workload API standard, its
//! `workloadapi.proto`), as prost structs: the same field numbers and
//! types, so any client's encoding is ours. WIT-SVIDs are not served.

use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    /// DER CRLs (none).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// Foreign trust domains' bundles (none).
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// DER certificates, the SVID first.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// DER PKCS#8, unencrypted.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// DER certificates of the trust domain's authorities.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    pub hint: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509BundlesResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub crl: Vec<Vec<u8>>,
    /// By trust domain's SPIFFE ID, DER certificates.
    #[prost(map = "string, bytes", tag = "2")]
    pub bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvidRequest {
    #[prost(string, repeated, tag = "1")]
    pub audience: Vec<String>,
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvidResponse {
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<JwtSvid>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtSvid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    #[prost(string, tag = "2")]
    pub svid: String,
    #[prost(string, tag = "3")]
    pub hint: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JwtBundlesResponse {
    /// By trust domain's SPIFFE ID, a JWK Set (JSON).
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJwtSvidRequest {
    #[prost(string, tag = "1")]
    pub audience: String,
    #[prost(string, tag = "2")]
    pub svid: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateJwtSvidResponse {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    #[prost(message, optional, tag = "2")]
    pub claims: Option<prost_types::Struct>,
}
