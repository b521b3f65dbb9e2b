//! SPIFFE Workload API server.
