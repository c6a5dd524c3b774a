//! vgpuctl: the command-line client (work in progress).
