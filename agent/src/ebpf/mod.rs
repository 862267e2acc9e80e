//! ebpf (being written)
