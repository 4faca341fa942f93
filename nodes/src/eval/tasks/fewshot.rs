//! Few-shot contexts as lm-evaluation-harness 0.4 builds them (`api/task.py` `fewshot_context`,
//! `api/samplers.py`): `description + Σ(shot text + target_delimiter + shot answer +
//! fewshot_delimiter) + question text`, the shots drawn per task by one
//! `random.Random(fewshot_seed)` consumed doc after doc, or the pool's first `n`.
//!
//! When the shots come from the evaluated docs themselves (no separate few-shot file), or the
//! harness task has no test split (HellaSwag, TruthfulQA), the harness draws `n + 1` and drops
//! the evaluated doc.

use super::formats::{Doc, Sampler};
use super::python_random::PythonRandom;

/// The few-shot settings of one task.
pub struct FewShot<'a> {
    /// Examples per question.
    pub n: usize,
    /// How they are picked.
    pub sampler: Sampler,
    /// Where they are picked from.
    pub pool: &'a [Doc],
    /// Whether each doc is kept out of its own shots (`n + 1` drawn, the doc dropped).
    pub exclude_question: bool,
    /// Between a question and its answer (`" "`).
    pub target_delimiter: &'a str,
    /// After each example (`"\n\n"`).
    pub fewshot_delimiter: &'a str,
}

/// Builds the contexts of a task's docs in order (the random draws depend on that order).
pub struct ContextBuilder<'a> {
    settings: FewShot<'a>,
    rng: PythonRandom,
}

impl<'a> ContextBuilder<'a> {
    /// A builder whose random draws start from `random.Random(seed)`.
    pub fn new(settings: FewShot<'a>, seed: u64) -> ContextBuilder<'a> {
        ContextBuilder {
            settings,
            rng: PythonRandom::new(seed),
        }
    }

    /// The context of `doc`, the next doc of the task, after its `description`.
    ///
    /// Errors when the pool holds fewer examples than the draw needs.
    pub fn context(&mut self, doc: &Doc, description: &str) -> Result<String, String> {
        let shots = self.shots(doc)?;
        let s = &self.settings;
        let mut out = description.to_string();
        for shot in shots {
            out.push_str(&shot.text);
            out.push_str(s.target_delimiter);
            out.push_str(&shot.choices[shot.gold]);
            out.push_str(s.fewshot_delimiter);
        }
        out.push_str(&doc.text);
        Ok(out)
    }

    /// The examples for `doc`, in the harness's order.
    fn shots(&mut self, doc: &Doc) -> Result<Vec<&'a Doc>, String> {
        let s = &self.settings;
        let (n, pool) = (s.n, s.pool);
        if n == 0 {
            return Ok(Vec::new());
        }
        let exclude = s.exclude_question;
        let not_doc = |shot: &&Doc| !exclude || shot.row != doc.row;
        match s.sampler {
            Sampler::FirstN => {
                let shots: Vec<&Doc> = pool.iter().filter(not_doc).take(n).collect();
                if shots.len() < n {
                    return Err(too_few(n, pool.len(), exclude));
                }
                Ok(shots)
            }
            Sampler::Random => {
                let draw = n + usize::from(exclude);
                let drawn = self
                    .rng
                    .sample(pool.len(), draw)
                    .map_err(|_| too_few(n, pool.len(), exclude))?;
                let shots: Vec<&Doc> = drawn
                    .iter()
                    .map(|&i| &pool[i])
                    .filter(not_doc)
                    .take(n)
                    .collect();
                if shots.len() == n {
                    return Ok(shots);
                }
                // The doc was drawn more than once (duplicate rows): draw again from the rest.
                let rest: Vec<&Doc> = pool.iter().filter(not_doc).collect();
                let again = self
                    .rng
                    .sample(rest.len(), n)
                    .map_err(|_| too_few(n, pool.len(), exclude))?;
                Ok(again.into_iter().map(|i| rest[i]).collect())
            }
        }
    }
}

fn too_few(n: usize, have: usize, exclude: bool) -> String {
    match exclude {
        true => format!(
            "the few-shot pool has {have} examples; {n} shots besides the question itself need {}",
            n + 1
        ),
        false => format!("the few-shot pool has {have} examples; {n} shots need {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(question: &str, choices: &[&str], gold: usize) -> Doc {
        let row = json!({"question": question, "choices": choices, "answer": gold});
        Doc {
            text: format!("Frage: {question}\nAntwort:"),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
            labels: None,
            row: row.as_object().unwrap().clone(),
        }
    }

    /// `/tmp/research/golden/ctx_demo.py` with lm_eval 0.4.13: the toy task, 2 shots from train.
    #[test]
    fn two_random_shots_from_a_training_pool_are_the_harness_s() {
        let train = [
            doc(
                "Was ist die Hauptstadt von Frankreich?",
                &["Paris", "Berlin"],
                0,
            ),
            doc("Wie viele Beine hat eine Spinne?", &["Sechs", "Acht"], 1),
            doc("Welche Farbe hat der Himmel?", &["Grün", "Blau"], 1),
            doc("Was trinkt eine Kuh?", &["Wasser", "Milch"], 0),
        ];
        let test = doc("Wie viel ist 2 + 2?", &["3", "4", "22"], 1);
        let mut builder = ContextBuilder::new(
            FewShot {
                n: 2,
                sampler: Sampler::Random,
                pool: &train,
                exclude_question: false,
                target_delimiter: " ",
                fewshot_delimiter: "\n\n",
            },
            1234,
        );
        assert_eq!(
            builder.context(&test, "").unwrap(),
            "Frage: Was trinkt eine Kuh?\nAntwort: Wasser\n\nFrage: Was ist die Hauptstadt von Frankreich?\nAntwort: Paris\n\nFrage: Wie viel ist 2 + 2?\nAntwort:"
        );
    }

    #[test]
    fn first_n_skips_the_evaluated_doc_when_the_pool_is_the_evaluated_set() {
        let docs = [
            doc("a", &["x", "y"], 0),
            doc("b", &["x", "y"], 1),
            doc("c", &["x", "y"], 0),
        ];
        let mut builder = ContextBuilder::new(
            FewShot {
                n: 2,
                sampler: Sampler::FirstN,
                pool: &docs,
                exclude_question: true,
                target_delimiter: "",
                fewshot_delimiter: "\n###\n",
            },
            1234,
        );
        assert_eq!(
            builder.context(&docs[0], "D: ").unwrap(),
            "D: Frage: b\nAntwort:y\n###\nFrage: c\nAntwort:x\n###\nFrage: a\nAntwort:"
        );
        let short = &docs[..2];
        let mut builder = ContextBuilder::new(
            FewShot {
                n: 2,
                sampler: Sampler::Random,
                pool: short,
                exclude_question: true,
                target_delimiter: " ",
                fewshot_delimiter: "\n\n",
            },
            1234,
        );
        let error = builder.context(&docs[0], "").unwrap_err();
        assert!(
            error.contains("has 2 examples; 2 shots besides the question itself need 3"),
            "{error}"
        );
    }
}
