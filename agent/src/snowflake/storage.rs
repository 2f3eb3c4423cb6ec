//! Cloud storage a query response sends the driver to, and the hosts the agent learns from it.
//!
//! Result chunks and PUT/GET transfers go from the driver straight to cloud storage, not to
//! Snowflake (docs/protocol.md, "Result chunks" and "PUT/GET"). docs/decisions.md §3: the hosts of the full URLs
//! in a response (chunk URLs, presigned URLs) are intercepted for the session's cgroup; for a
//! `stageInfo` without a URL the agent derives the host forms the drivers build. URLs are kept
//! without their query string, which is where the signature lives (docs/decisions.md §14); stage
//! credentials are kept by name only.

use serde::Deserialize;

use super::error::ParseError;
use super::json::KeysOnly;
use super::result::QueryResponse;

/// A storage URL the driver will fetch, without its query string (the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrl {
    /// `https` (or `http` against a test server).
    pub scheme: String,
    /// The host, lower-cased (an IPv6 literal keeps its brackets).
    pub host: String,
    /// The port when the URL names one.
    pub port: Option<u16>,
    /// The path (object key); the query string is dropped.
    pub path: String,
}

impl StorageUrl {
    /// Parses an absolute URL; `None` when it is not one (no scheme or no host).
    pub fn parse(url: &str) -> Option<StorageUrl> {
        let uri: http::Uri = url.trim().parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
        Some(StorageUrl {
            scheme,
            host,
            port: uri.port_u16(),
            path: uri.path().to_owned(),
        })
    }
}

impl std::fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)
    }
}

/// Parses an optional URL field of a response; an empty string counts as absent.
pub(crate) fn url_field(
    what: &'static str,
    field: &'static str,
    value: Option<String>,
) -> Result<Option<StorageUrl>, ParseError> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(url) => StorageUrl::parse(url)
            .map(Some)
            .ok_or(ParseError::InvalidField {
                what,
                field,
                reason: "expected an absolute URL",
            }),
    }
}

/// Where a stage lives (`stageInfo.locationType`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocationType {
    /// Amazon S3.
    S3,
    /// Azure Blob Storage.
    Azure,
    /// Google Cloud Storage.
    Gcs,
    /// A local file system (test deployments): nothing to learn.
    LocalFs,
    /// Any other value, as sent.
    Other(String),
}

impl LocationType {
    fn parse(s: &str) -> Self {
        match s.to_ascii_uppercase().as_str() {
            "S3" => LocationType::S3,
            "AZURE" => LocationType::Azure,
            "GCS" => LocationType::Gcs,
            "LOCAL_FS" => LocationType::LocalFs,
            _ => LocationType::Other(s.to_owned()),
        }
    }
}

/// The `stageInfo` of a PUT/GET answer; credentials by name only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// `locationType`.
    pub location_type: LocationType,
    /// `location`: `bucket/path/` (S3, GCS) or `container/path/` (Azure).
    pub location: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `endPoint` (FIPS or custom S3 endpoint, Azure's blob endpoint, GCS endpoint).
    pub end_point: Option<String>,
    /// `storageAccount` (Azure).
    pub storage_account: Option<String>,
    /// `presignedUrl` (GCS), without its signature.
    pub presigned_url: Option<StorageUrl>,
    /// `useS3RegionalUrl`.
    pub use_s3_regional_url: bool,
    /// `useRegionalUrl`.
    pub use_regional_url: bool,
    /// `useVirtualUrl`.
    pub use_virtual_url: bool,
    /// `isClientSideEncrypted`.
    pub is_client_side_encrypted: bool,
    /// Names of the keys in `creds` (e.g. `AWS_KEY_ID`, `AWS_SECRET_KEY`, `AWS_TOKEN`); the values
    /// are never read.
    pub credential_names: Vec<String>,
}

impl StageInfo {
    /// `creds` held at least one credential.
    pub fn has_credentials(&self) -> bool {
        !self.credential_names.is_empty()
    }

    /// The bucket (S3, GCS) or container (Azure): `location` up to the first `/`.
    pub fn bucket(&self) -> Option<&str> {
        self.location
            .as_deref()
            .and_then(|l| l.split('/').next())
            .filter(|b| !b.is_empty())
    }

    /// The hosts a driver may contact for this stage when it has no presigned URL, in the forms
    /// docs/protocol.md lists (every form, since which one a driver picks depends on its version and
    /// on flags the agent cannot see).
    pub fn derived_hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        let region = self
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        let end_point = self.end_point.as_deref().and_then(endpoint_host);
        match self.location_type {
            LocationType::S3 => {
                let Some(bucket) = self.bucket() else {
                    return hosts;
                };
                if let Some(ep) = &end_point {
                    hosts.push(format!("{bucket}.{ep}"));
                }
                match region {
                    Some(r) if r.starts_with("cn-") => {
                        hosts.push(format!("{bucket}.s3.{r}.amazonaws.com.cn"));
                        hosts.push(format!("s3.{r}.amazonaws.com.cn"));
                    }
                    _ => {
                        hosts.push(format!("{bucket}.s3.amazonaws.com"));
                        hosts.push(format!("{bucket}.s3-accelerate.amazonaws.com"));
                        if let Some(r) = region {
                            hosts.push(format!("s3.{r}.amazonaws.com"));
                            hosts.push(format!("{bucket}.s3.{r}.amazonaws.com"));
                        }
                    }
                }
            }
            LocationType::Azure => {
                if let Some(account) = self.storage_account.as_deref().filter(|a| !a.is_empty()) {
                    let ep = end_point.unwrap_or_else(|| "blob.core.windows.net".to_owned());
                    hosts.push(format!("{account}.{ep}"));
                }
            }
            LocationType::Gcs => {
                if let Some(ep) = &end_point {
                    hosts.push(ep.clone());
                }
                hosts.push("storage.googleapis.com".to_owned());
                if let Some(bucket) = self.bucket() {
                    hosts.push(format!("{bucket}.storage.googleapis.com"));
                }
                if let Some(r) = region {
                    hosts.push(format!("storage.{r}.rep.googleapis.com"));
                }
            }
            LocationType::LocalFs | LocationType::Other(_) => {}
        }
        let mut out: Vec<String> = Vec::new();
        for h in hosts.into_iter().map(|h| h.to_ascii_lowercase()) {
            if is_dns_name(&h) && !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }
}

/// An `endPoint` value as a host: a scheme, a path and a trailing dot are dropped.
fn endpoint_host(ep: &str) -> Option<String> {
    let ep = ep.trim();
    let ep = ep.split_once("://").map_or(ep, |(_, rest)| rest);
    let ep = ep.split('/').next().unwrap_or("").trim_end_matches('.');
    (!ep.is_empty()).then(|| ep.to_ascii_lowercase())
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireStageInfo {
    location_type: Option<String>,
    location: Option<String>,
    region: Option<String>,
    end_point: Option<String>,
    storage_account: Option<String>,
    creds: Option<KeysOnly>,
    presigned_url: Option<String>,
    use_s3_regional_url: Option<bool>,
    use_regional_url: Option<bool>,
    use_virtual_url: Option<bool>,
    is_client_side_encrypted: Option<bool>,
}

impl WireStageInfo {
    pub(crate) fn into_stage_info(self, what: &'static str) -> Result<StageInfo, ParseError> {
        Ok(StageInfo {
            location_type: LocationType::parse(self.location_type.as_deref().unwrap_or("")),
            location: self.location,
            region: self.region,
            end_point: self.end_point,
            storage_account: self.storage_account,
            presigned_url: url_field(what, "stageInfo.presignedUrl", self.presigned_url)?,
            use_s3_regional_url: self.use_s3_regional_url.unwrap_or(false),
            use_regional_url: self.use_regional_url.unwrap_or(false),
            use_virtual_url: self.use_virtual_url.unwrap_or(false),
            is_client_side_encrypted: self.is_client_side_encrypted.unwrap_or(false),
            credential_names: self.creds.map(|k| k.0).unwrap_or_default(),
        })
    }
}

/// Where a learned host came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostSource {
    /// `data.chunks[].url`.
    ChunkUrl,
    /// `stageInfo.presignedUrl` or `data.presignedUrls[]`.
    PresignedUrl,
    /// Derived from a `stageInfo` without a URL.
    Stage,
}

/// A storage host to intercept for the session's cgroup (docs/decisions.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedHost {
    /// Lower-case host name (or IP literal).
    pub host: String,
    /// The port, when a URL named one.
    pub port: Option<u16>,
    /// Where it came from.
    pub source: HostSource,
}

/// Every storage host a query response points the driver at, de-duplicated by host and port.
pub fn hosts_to_learn(resp: &QueryResponse) -> Vec<LearnedHost> {
    let mut out: Vec<LearnedHost> = Vec::new();
    let mut add = |host: String, port: Option<u16>, source: HostSource| {
        if !out.iter().any(|h| h.host == host && h.port == port) {
            out.push(LearnedHost { host, port, source });
        }
    };
    for chunk in &resp.chunks {
        add(chunk.url.host.clone(), chunk.url.port, HostSource::ChunkUrl);
    }
    for url in &resp.presigned_urls {
        add(url.host.clone(), url.port, HostSource::PresignedUrl);
    }
    if let Some(stage) = &resp.stage_info {
        match &stage.presigned_url {
            Some(url) => add(url.host.clone(), url.port, HostSource::PresignedUrl),
            None if resp.presigned_urls.is_empty() => {
                for host in stage.derived_hosts() {
                    add(host, None, HostSource::Stage);
                }
            }
            None => {}
        }
    }
    out
}

/// Where the transfers of a PUT/GET statement go: requests to `host` whose path starts with
/// `path_prefix` belong to that statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferTarget {
    /// Lower-case host name.
    pub host: String,
    /// The object path (or its stage prefix), starting with `/`.
    pub path_prefix: String,
}

impl TransferTarget {
    /// Whether a request to `host` for `path` is one of this target's transfers.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.host.eq_ignore_ascii_case(host) && path.starts_with(&self.path_prefix)
    }
}

/// The targets of a PUT/GET answer's transfers: every presigned URL, and the stage location under
/// each host form a driver may use (virtual-hosted, where the bucket is in the host, and
/// path-style, where it starts the path). Empty for an answer that is not a file command.
pub fn transfer_targets(resp: &QueryResponse) -> Vec<TransferTarget> {
    let mut out: Vec<TransferTarget> = Vec::new();
    if resp.command.is_none() {
        return out;
    }
    let mut add = |host: &str, path_prefix: String| {
        let t = TransferTarget {
            host: host.to_ascii_lowercase(),
            path_prefix,
        };
        if !t.path_prefix.is_empty() && !out.contains(&t) {
            out.push(t);
        }
    };
    for url in &resp.presigned_urls {
        add(&url.host, url.path.clone());
    }
    let Some(stage) = &resp.stage_info else {
        return out;
    };
    if let Some(url) = &stage.presigned_url {
        add(&url.host, url.path.clone());
    }
    let location = stage
        .location
        .as_deref()
        .unwrap_or("")
        .trim_start_matches('/');
    if location.is_empty() || matches!(stage.location_type, LocationType::LocalFs) {
        return out;
    }
    let bucket = stage.bucket().unwrap_or("");
    let in_bucket = location
        .split_once('/')
        .map_or("", |(_, rest)| rest)
        .to_owned();
    for host in stage.derived_hosts() {
        // Bytes, not a `str` slice: the bucket's byte length need not fall on a character
        // boundary of the host.
        let virtual_hosted = !matches!(stage.location_type, LocationType::Azure)
            && !bucket.is_empty()
            && host
                .as_bytes()
                .get(..bucket.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(bucket.as_bytes()))
            && host.as_bytes().get(bucket.len()) == Some(&b'.');
        if virtual_hosted {
            add(&host, format!("/{in_bucket}"));
        } else {
            add(&host, format!("/{location}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stage(kind: LocationType, location: &str) -> StageInfo {
        StageInfo {
            location_type: kind,
            location: Some(location.into()),
            region: None,
            end_point: None,
            storage_account: None,
            presigned_url: None,
            use_s3_regional_url: false,
            use_regional_url: false,
            use_virtual_url: false,
            is_client_side_encrypted: true,
            credential_names: vec![],
        }
    }

    #[test]
    fn urls_lose_their_signature() {
        let u = StorageUrl::parse(
            "https://SFC-Prod-Stage.s3.us-west-2.amazonaws.com/results/01b/main/data_0_0_0?X-Amz-Signature=abc&x=1",
        )
        .unwrap();
        assert_eq!(u.host, "sfc-prod-stage.s3.us-west-2.amazonaws.com");
        assert_eq!(u.port, None);
        assert_eq!(u.path, "/results/01b/main/data_0_0_0");
        assert!(!format!("{u} {u:?}").contains("Signature"));
        let u =
            StorageUrl::parse("http://127.0.0.1:8784/fake-stage-results/x/0?X-Amz-Signature=fake")
                .unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", Some(8784)));
        assert_eq!(
            u.to_string(),
            "http://127.0.0.1:8784/fake-stage-results/x/0"
        );
        assert_eq!(StorageUrl::parse("/relative/path"), None);
        assert_eq!(StorageUrl::parse("not a url"), None);
    }

    #[test]
    fn s3_forms() {
        let mut s = stage(LocationType::S3, "sfc-stage-bucket/tmp/abc/");
        s.region = Some("us-west-2".into());
        assert_eq!(
            s.derived_hosts(),
            vec![
                "sfc-stage-bucket.s3.amazonaws.com",
                "sfc-stage-bucket.s3-accelerate.amazonaws.com",
                "s3.us-west-2.amazonaws.com",
                "sfc-stage-bucket.s3.us-west-2.amazonaws.com",
            ]
        );
        s.end_point = Some("s3-fips.us-gov-west-1.amazonaws.com".into());
        assert_eq!(
            s.derived_hosts()[0],
            "sfc-stage-bucket.s3-fips.us-gov-west-1.amazonaws.com"
        );
        s.end_point = None;
        s.region = Some("cn-north-1".into());
        assert_eq!(
            s.derived_hosts(),
            vec![
                "sfc-stage-bucket.s3.cn-north-1.amazonaws.com.cn",
                "s3.cn-north-1.amazonaws.com.cn"
            ]
        );
    }

    #[test]
    fn azure_and_gcs_forms() {
        let mut s = stage(LocationType::Azure, "stage-container/tmp/");
        s.storage_account = Some("sfcacct01".into());
        assert_eq!(s.derived_hosts(), vec!["sfcacct01.blob.core.windows.net"]);
        s.end_point = Some("blob.core.usgovcloudapi.net".into());
        assert_eq!(
            s.derived_hosts(),
            vec!["sfcacct01.blob.core.usgovcloudapi.net"]
        );
        s.storage_account = None;
        assert!(s.derived_hosts().is_empty());

        let mut s = stage(LocationType::Gcs, "gcs-bucket/path/");
        assert_eq!(
            s.derived_hosts(),
            vec![
                "storage.googleapis.com",
                "gcs-bucket.storage.googleapis.com"
            ]
        );
        s.region = Some("me-central2".into());
        assert!(
            s.derived_hosts()
                .contains(&"storage.me-central2.rep.googleapis.com".to_owned())
        );
        assert!(
            stage(LocationType::LocalFs, "/tmp/x")
                .derived_hosts()
                .is_empty()
        );
    }

    #[test]
    fn odd_values_give_no_host() {
        let mut s = stage(LocationType::S3, "bad bucket/x");
        s.region = Some("us-east-1".into());
        assert!(s.derived_hosts().iter().all(|h| !h.contains(' ')));
        assert_eq!(s.derived_hosts(), vec!["s3.us-east-1.amazonaws.com"]);
        assert!(stage(LocationType::S3, "").derived_hosts().is_empty());
        assert_eq!(
            endpoint_host("https://s3-fips.amazonaws.com/"),
            Some("s3-fips.amazonaws.com".into())
        );
    }

    #[test]
    fn transfer_targets_cover_presigned_urls_and_both_s3_forms() {
        let gcs = crate::snowflake::parse_query_response(
            br#"{"data":{"stageInfo":{"locationType":"GCS","location":"DB1.SCHEMA1.STG1/",
            "presignedUrl":"https://stage.example/fs_bucket/DB1/SCHEMA1/STG1/data1.csv.gz?X-Goog-Signature=s"},
            "src_locations":["data1.csv"],"command":"UPLOAD"},"success":true}"#,
        )
        .unwrap();
        let t = transfer_targets(&gcs);
        assert!(t.iter().any(|t| t.host == "stage.example"
            && t.path_prefix == "/fs_bucket/DB1/SCHEMA1/STG1/data1.csv.gz"));
        assert!(t[0].matches("Stage.Example", "/fs_bucket/DB1/SCHEMA1/STG1/data1.csv.gz"));
        assert!(!t[0].matches("stage.example", "/fs_bucket/DB1/SCHEMA1/STG1/other"));

        let s3 = crate::snowflake::parse_query_response(
            br#"{"data":{"stageInfo":{"locationType":"S3","location":"sfc-bucket/stages/abc/",
            "region":"us-west-2","creds":{"AWS_KEY_ID":"k","AWS_SECRET_KEY":"s"}},
            "src_locations":["a.csv"],"command":"DOWNLOAD"},"success":true}"#,
        )
        .unwrap();
        let t = transfer_targets(&s3);
        let hit = |host: &str, path: &str| t.iter().any(|t| t.matches(host, path));
        assert!(hit(
            "sfc-bucket.s3.us-west-2.amazonaws.com",
            "/stages/abc/a.csv.gz"
        ));
        assert!(hit(
            "s3.us-west-2.amazonaws.com",
            "/sfc-bucket/stages/abc/a.csv.gz"
        ));
        assert!(!hit(
            "s3.us-west-2.amazonaws.com",
            "/other-bucket/stages/abc/a.csv.gz"
        ));
        assert!(!hit(
            "sfc-bucket.s3.us-west-2.amazonaws.com",
            "/stages/other/a.csv.gz"
        ));

        let plain = crate::snowflake::parse_query_response(
            br#"{"data":{"rowset":[["1"]],"rowtype":[]},"success":true}"#,
        )
        .unwrap();
        assert!(transfer_targets(&plain).is_empty(), "not a file command");
    }

    #[test]
    fn multi_byte_regions_and_buckets_are_compared_as_bytes() {
        let answer = |bucket: &str, region: &str| {
            let body = format!(
                r#"{{"data":{{"stageInfo":{{"locationType":"S3","location":"{bucket}/stages/abc/",
                "region":"{region}"}},"src_locations":["a.csv"],"command":"DOWNLOAD"}},"success":true}}"#
            );
            transfer_targets(&crate::snowflake::parse_query_response(body.as_bytes()).unwrap())
        };
        // A region that is no DNS label gives no host of its own; the other forms stay.
        let t = answer("sfc-bucket", "eu-zürich-1");
        assert!(t.iter().all(|t| t.host.is_ascii()), "{t:?}");
        assert!(
            t.iter()
                .any(|t| t.matches("sfc-bucket.s3.amazonaws.com", "/stages/abc/a.csv"))
        );
        // A bucket whose byte length ends inside a character of nothing, or of the host: no panic,
        // and only a host that starts with the bucket and a dot is virtual-hosted.
        for bucket in ["é", "bü", "日本", "sfc-bucketé"] {
            let t = answer(bucket, "ap-日本-1");
            assert!(t.iter().all(|t| t.host.is_ascii()), "{bucket}: {t:?}");
            assert!(
                t.iter()
                    .all(|t| t.path_prefix.starts_with(&format!("/{bucket}/"))),
                "{bucket}: {t:?}"
            );
        }
        let t = answer("SFC-Bucket", "us-west-2");
        assert!(
            t.iter()
                .any(|t| t.matches("sfc-bucket.s3.us-west-2.amazonaws.com", "/stages/abc/"))
        );
    }
}
