//! Query response and monitoring parsing, and the storage hosts learned from a response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snowtrail::snowflake::{hosts_to_learn, parse_monitoring_response, parse_query_response};

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = parse_query_response(data) {
        for host in hosts_to_learn(&resp) {
            assert!(!host.host.is_empty());
        }
        if let Some(stage) = &resp.stage_info {
            let _ = stage.derived_hosts();
        }
    }
    let _ = parse_monitoring_response(data);
});
