//! Evaluation: the `evaluate` node ([`evaluate`]) scores a policy against its reference on
//! held-out pairs and multiple-choice tasks ([`tasks`]), asks an LLM judge ([`judge`]), grades MT-Bench answers ([`mt_bench`]), and
//! writes `eval.json` and the report ([`report`], with [`curves`] for the SVG plots). The types
//! they share are in [`results`]; a file imports only rooms below it, never `evaluate`.

pub mod curves;
pub mod evaluate;
pub mod judge;
pub mod mt_bench;
pub mod report;
pub mod results;
pub mod tasks;
