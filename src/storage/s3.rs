//! The S3 client behind `STORE=s3`, and how it retries. The stores use it through the object
//! layer (`crate::storage::objects`); presigned direct URLs use it as it is.

/// A client of one S3 bucket; plain `http://` endpoints (a gateway on the loopback, tests)
/// are allowed.
pub fn client(
    endpoint: &str,
    bucket: &str,
    region: &str,
    access_key_id: &str,
    secret_access_key: &str,
) -> object_store::Result<object_store::aws::AmazonS3> {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_bucket_name(bucket)
        .with_region(region)
        .with_access_key_id(access_key_id)
        .with_secret_access_key(secret_access_key)
        .with_retry(retries())
        .build()
}

/// A request the store answers with a server error (or too many requests) is sent again a few
/// times within seconds, not the client's default 10 times over 3 minutes: a caller waiting on
/// a store that is down should hear so. A conditional write's retry may find its own first
/// attempt applied; `objects::Normalized` settles that.
fn retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
        ..object_store::RetryConfig::default()
    }
}

/// The object store of `STORE=s3`, from its checked settings.
pub fn from_config(
    config: &crate::config::Config,
) -> Result<object_store::aws::AmazonS3, crate::config::ConfigError> {
    let (endpoint, bucket, key, secret) = config.s3_settings()?;
    client(endpoint, bucket, &config.s3_region, key, secret)
        .map_err(|e| crate::config::ConfigError::BadS3(e.to_string()))
}
