//! Every message an agent or a client can send, decoded from untrusted
//! bytes and put through the server's checks: nothing may panic, and a spec
//! the checks accept must validate and survive a round trip to the wire.
#![no_main]

use hodei_core::TenantId;
use hodei_hwp::proto;
use hodei_hwp::{check_agent_message, spec_from_wire, spec_to_wire};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Ok(m) = proto::AgentMessage::decode(bytes) {
                let _ = check_agent_message(m);
            }
        }
        1 => {
            if let Ok(r) = proto::SubmitRequest::decode(bytes)
                && let Some(wire) = r.spec
                && let Ok(spec) = spec_from_wire(wire, &TenantId::default())
            {
                assert!(spec.validate().is_ok(), "accepted spec must validate");
                let again = spec_from_wire(spec_to_wire(&spec, true), &TenantId::default())
                    .expect("an accepted spec converts back");
                assert_eq!(again, spec);
            }
        }
        2 => {
            if let Ok(r) = proto::GetRequest::decode(bytes) {
                let _ = r.job_id.parse::<hodei_core::JobId>();
            }
        }
        3 => {
            if let Ok(r) = proto::ListRequest::decode(bytes) {
                let _ = proto::JobStateKind::try_from(r.state);
                let _ = r.page_token.parse::<hodei_core::JobId>();
            }
        }
        4 => {
            let _ = proto::WatchRequest::decode(bytes);
        }
        5 => {
            let _ = proto::LogsRequest::decode(bytes);
        }
        6 => {
            let _ = proto::CancelRequest::decode(bytes);
        }
        _ => {
            let _ = proto::DrainWorkerRequest::decode(bytes);
        }
    }
});
