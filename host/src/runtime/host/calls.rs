//! `granary:grain/calls`: `call` waits for another grain's turn; `send` is staged and
//! leaves through the outbox after this turn commits.

use super::GrainHost;
use crate::grain_id::GrainId;
use crate::message::CallError;
use crate::runtime::bindings::granary::grain::calls::Host;
use crate::runtime::bindings::types;
use crate::storage::OutboxEntry;

impl Host for GrainHost {
    async fn call(
        &mut self,
        target: types::GrainId,
        method: String,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, types::CallError> {
        let target = parse_target(&target)?;
        check_method(&method)?;
        let chain = self.turn.chain.extended(&self.id);
        let silo = self.silo.clone();
        let reply = silo
            .call(target, method, payload, chain, self.turn.deadline)
            .await?;
        Ok(reply)
    }

    fn send(
        &mut self,
        target: types::GrainId,
        method: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::CallError>> {
        let target = match parse_target(&target).and_then(|t| check_method(&method).map(|()| t)) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e.into())),
        };
        let cap = self.silo.config.max_payload_bytes;
        if payload.len() > cap {
            return Ok(Err(CallError::TooLarge(cap as u64).into()));
        }
        if self.silo.kinds.get(&target.kind).is_none() {
            return Ok(Err(CallError::UnknownKind(target.kind).into()));
        }
        self.turn.sends.push(OutboxEntry {
            sender: self.id.clone(),
            target,
            method,
            payload,
        });
        Ok(Ok(()))
    }
}

fn check_method(method: &str) -> Result<(), CallError> {
    crate::grain_id::validate_method(method).map_err(|e| CallError::BadId(e.to_string()))
}

fn parse_target(target: &types::GrainId) -> Result<GrainId, CallError> {
    GrainId::parse(&target.kind, &target.key).map_err(|e| CallError::BadId(e.to_string()))
}

impl From<CallError> for types::CallError {
    fn from(e: CallError) -> Self {
        use types::CallError as W;
        match e {
            CallError::UnknownKind(s) => W::UnknownKind(s),
            CallError::BadId(s) => W::BadId(s),
            CallError::UnknownMethod(s) => W::UnknownMethod(s),
            CallError::BadPayload(s) => W::BadPayload(s),
            CallError::App(s) => W::App(s),
            CallError::Trapped(s) | CallError::MemoryLimit(s) => W::Trapped(s),
            CallError::Deadline => W::Deadline,
            CallError::Overloaded => W::Overloaded,
            CallError::Draining => W::Draining,
            CallError::Cycle(s) => W::Cycle(s),
            CallError::TooLarge(n) => W::TooLarge(n),
        }
    }
}

impl From<types::GrainError> for CallError {
    fn from(e: types::GrainError) -> Self {
        match e {
            types::GrainError::UnknownMethod(m) => CallError::UnknownMethod(m),
            types::GrainError::BadPayload(m) => CallError::BadPayload(m),
            types::GrainError::App(m) => CallError::App(m),
        }
    }
}
