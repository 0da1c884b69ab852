//! The management service: the cluster map, its generation, and the control API.
#![forbid(unsafe_code)]
