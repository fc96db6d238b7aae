//! Tributary's black-box tests: they drive the real `tributary` binary on
//! generated data and inspect what it writes.

mod check;
mod orders;
mod support;
