//! nhi-agent kernel programs.
//!
//! They do one thing: send TCP connections that intercepted workloads make to
//! configured destinations to the agent's local listener, and remember who made them
//! and where they were going. No policy lives here beyond "redirect and remember";
//! userspace decides everything else.
//!
//! The chain, for one connection:
//! 1. `connect4`/`connect6` (the client's `connect()`): if the destination is a target
//!    and the cgroup is intercepted (or not yet classified), store a [`ConnRecord`]
//!    under the socket cookie in `NHI_PENDING` and rewrite the destination to the proxy.
//! 2. `sock_ops` ACTIVE_ESTABLISHED (client socket): copy the record to `NHI_BY_ADDR`
//!    keyed by the client's local address, the only thing both ends can name.
//! 3. `sock_ops` PASSIVE_ESTABLISHED (the proxy's accepted socket): move the record to
//!    `NHI_ACCEPTED` keyed by the accepted socket's cookie, which the proxy reads with
//!    `SO_COOKIE`. A record therefore only ever reaches a connection that the kernel
//!    redirected: a stale address entry cannot be replayed by a later direct connection,
//!    because entries are removed when the client socket closes.
//! 4. `getpeername4`/`getpeername6` (client side): report the original destination, so
//!    clients that log or verify their peer see what they asked for.
//!
//! Separately, `lineage.rs`: exec/fork/exit tracepoints for tasks of intercepted
//! cgroups (the same `classify` decision), reported into a ring buffer for the
//! agent's process lineage.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod lineage;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
