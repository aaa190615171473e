//! Fixed inputs shared by the criterion benches in `benches/benches/`.
