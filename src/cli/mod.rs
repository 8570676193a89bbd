//! Command line (filled in by the vhost/main work).
