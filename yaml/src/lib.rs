//! YAML layout declarations: listeners, subsystems, namespaces.
#![forbid(unsafe_code)]
