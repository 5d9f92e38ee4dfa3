//! What a decision of the core asks for: the record to write, the audit events, the answer.
//! The service commits record and events in one atomic write before it answers.

use protocol::message::Response;

use super::error::LifecycleError;
use super::record::DeviceRecord;
use crate::audit::AuditEvent;

/// The outcome of a request that was accepted.
#[derive(Debug)]
pub struct Decision {
    /// The device record to write, if it changed.
    pub write: Option<DeviceRecord>,
    /// Audit events to append in the same write.
    pub events: Vec<AuditEvent>,
    /// The answer to the device.
    pub response: Response,
}

impl Decision {
    pub(crate) fn reply(response: Response) -> Self {
        Decision {
            write: None,
            events: Vec::new(),
            response,
        }
    }

    /// `record` written with `events`, acknowledged.
    pub(crate) fn ack(record: DeviceRecord, events: Vec<AuditEvent>) -> Self {
        Decision {
            write: Some(record),
            events,
            response: Response::Ack,
        }
    }

    /// This decision followed by `next`, decided on the record as this one leaves it
    /// (`record` being what this one was decided on): one request that carries two steps, one
    /// write with the events of both, and the second step's answer. A refusal of either
    /// refuses both, so the first step is never committed alone.
    pub(crate) fn then(
        self,
        record: Option<DeviceRecord>,
        next: impl FnOnce(Option<DeviceRecord>) -> Result<Decision, LifecycleError>,
    ) -> Result<Decision, LifecycleError> {
        let first = self.write;
        let decided = next(first.clone().or(record))?;
        let mut events = self.events;
        events.extend(decided.events);
        Ok(Decision {
            write: decided.write.or(first),
            events,
            response: decided.response,
        })
    }
}
