//! The vhost-user backend (filled in by the integrator).
