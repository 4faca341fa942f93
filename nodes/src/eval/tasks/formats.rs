//! Task rows as lm-evaluation-harness 0.4 reads them: each preset turns one JSONL row of its
//! dataset's format into the question text (`doc_to_text`), the choices (`doc_to_choice`), the
//! answer's index (`doc_to_target`) and, for TruthfulQA's mc2, which choices are true — with the
//! harness's own preprocessing (`tasks/okapi/*/utils.py`, `tasks/hellaswag/utils.py`,
//! `tasks/truthfulqa/utils.py`), so a context is the same string the harness builds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// A dataset format and the harness task it reproduces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// `{question, choices, answer}` (`answer`: the right choice's index or text), the question
    /// text through `prompt` (default `{{question}}`).
    #[default]
    Plain,
    /// `arc_de` (okapi `alexandrainst/m_arc`): `instruction`, `option_a`…`option_e`, `answer`
    /// letter; `Question: …\nAnswer:`.
    ArcDe,
    /// `hellaswag_de` (okapi `alexandrainst/m_hellaswag`): `activity_label`, `ctx_a`, `ctx_b`,
    /// `endings`, `label` (a string, "0"…"3").
    HellaswagDe,
    /// `m_mmlu_de` (okapi `alexandrainst/m_mmlu`): `instruction`, `option_a`…`option_d`,
    /// `answer` letter; the choices are the letters.
    MMmluDe,
    /// `truthfulqa_de_mc1` (okapi `alexandrainst/m_truthfulqa`): `question`,
    /// `mc1_targets_choices` (the true answer first), behind the harness's English 6-shot primer.
    TruthfulqaDeMc1,
    /// `truthfulqa_de_mc2`: `question`, `mc2_targets_choices`, `mc2_targets_labels`.
    TruthfulqaDeMc2,
    /// `belebele_deu_Latn` (`facebook/belebele`): `flores_passage`, `question`,
    /// `mc_answer1`…`mc_answer4`, `correct_answer_num` ("1"…"4"); the choices are the letters.
    #[serde(rename = "belebele_deu_Latn")]
    BelebeleDeuLatn,
    /// `arc_easy` / `arc_challenge` (`allenai/ai2_arc`, and translations in its format):
    /// `question`, `choices: {text, label}`, `answerKey`.
    Arc,
    /// `hellaswag` (`Rowan/hellaswag`): as `hellaswag_de`.
    Hellaswag,
    /// `mmlu` (`cais/mmlu`): `question`, `choices` (four), `answer` index; the choices are the
    /// letters (the subject line goes in `description`).
    Mmlu,
    /// `truthfulqa_mc1` (`truthfulqa/truthful_qa`): `question`, `mc1_targets: {choices, labels}`.
    TruthfulqaMc1,
    /// `truthfulqa_mc2`: `question`, `mc2_targets: {choices, labels}`.
    TruthfulqaMc2,
}

/// How the harness picks few-shot examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// `random.Random(fewshot_seed).sample`, one draw after another over the task's docs.
    Random,
    /// The first `num_fewshot` docs of the pool.
    FirstN,
}

/// What a preset fixes beyond the row format: its metrics and few-shot sampler.
pub struct PresetDefaults {
    /// Metrics the harness task reports.
    pub metrics: &'static [Metric],
    /// Its few-shot sampler.
    pub sampler: Sampler,
}

/// A multiple-choice metric.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of questions whose most likely choice (summed log-likelihood) is the answer.
    Acc,
    /// As `acc`, the log-likelihood divided by the choice's length in characters.
    AccNorm,
    /// As `acc`, the log-likelihood divided by the choice's length in UTF-8 bytes.
    AccBytes,
    /// TruthfulQA mc1: share of questions whose single true answer is the most likely choice.
    Mc1,
    /// TruthfulQA mc2: mean probability mass on the true answers, normalised over all choices.
    Mc2,
}

impl Metric {
    /// The metric's definition, for the report and the model card.
    pub fn definition(self) -> &'static str {
        match self {
            Metric::Acc => "share of questions whose highest-log-likelihood choice is the answer",
            Metric::AccNorm => {
                "as acc, log-likelihood divided by the choice's length in characters"
            }
            Metric::AccBytes => "as acc, log-likelihood divided by the choice's UTF-8 bytes",
            Metric::Mc1 => "share of questions whose one true answer is the most likely choice",
            Metric::Mc2 => "mean normalised probability mass on the true answers",
        }
    }
}

impl Preset {
    /// Whether the harness task keeps each question out of its own shots even when they come
    /// from another file: its YAML has no test split, so its `fewshot_split == test_split`
    /// check compares `None` with `None` and draws `n + 1` (HellaSwag, TruthfulQA).
    pub fn always_excludes_the_question(self) -> bool {
        matches!(
            self,
            Preset::HellaswagDe
                | Preset::Hellaswag
                | Preset::TruthfulqaDeMc1
                | Preset::TruthfulqaDeMc2
                | Preset::TruthfulqaMc1
                | Preset::TruthfulqaMc2
        )
    }

    /// Whether the harness task takes its shots from a training or dev split (so a spec with
    /// shots must name that file in `fewshot_path`).
    pub fn shots_from_training_split(self) -> bool {
        matches!(
            self,
            Preset::ArcDe | Preset::Arc | Preset::MMmluDe | Preset::Mmlu
        )
    }

    /// Whether the harness task pins `num_fewshot: 0` (English TruthfulQA).
    pub fn zero_shot_only(self) -> bool {
        matches!(self, Preset::TruthfulqaMc1 | Preset::TruthfulqaMc2)
    }

    /// The harness task's metrics and sampler.
    pub fn defaults(self) -> PresetDefaults {
        use Metric::*;
        let (metrics, sampler): (&'static [Metric], Sampler) = match self {
            Preset::Plain
            | Preset::ArcDe
            | Preset::HellaswagDe
            | Preset::Arc
            | Preset::Hellaswag => (&[Acc, AccNorm], Sampler::Random),
            Preset::MMmluDe | Preset::Mmlu => (&[Acc], Sampler::FirstN),
            Preset::BelebeleDeuLatn => (&[Acc, AccNorm], Sampler::FirstN),
            Preset::TruthfulqaDeMc1 | Preset::TruthfulqaMc1 => (&[Mc1], Sampler::Random),
            Preset::TruthfulqaDeMc2 | Preset::TruthfulqaMc2 => (&[Mc2], Sampler::Random),
        };
        PresetDefaults { metrics, sampler }
    }
}

/// One question as the harness sees it.
#[derive(Clone, Debug)]
pub struct Doc {
    /// `doc_to_text`: the question, before the target delimiter.
    pub text: String,
    /// `doc_to_choice`.
    pub choices: Vec<String>,
    /// `doc_to_target`: the right choice's index (0 for TruthfulQA).
    pub gold: usize,
    /// Which choices are true (TruthfulQA mc2, or a plain row's `labels`).
    pub labels: Option<Vec<bool>>,
    /// The row as read, to tell a doc from the few-shot examples drawn for it.
    pub row: Map<String, Json>,
}

/// The English primer TruthfulQA puts before every question (`QA_PROMPT` of
/// `tasks/okapi/truthfulqa_multilingual/utils.py`, the same text as `tasks/truthfulqa`).
pub const TRUTHFULQA_PRIMER: &str = "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\nQ: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\nQ: Which party did he belong to?\nA: He belonged to the Republican Party.\n\nQ: What is the square root of banana?\nA: I have no comment.\n\nQ: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\nQ: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.";

/// A row's fields, with errors naming the field.
struct Row<'a>(&'a Map<String, Json>);

impl Row<'_> {
    fn get(&self, key: &str) -> Result<&Json, String> {
        self.0.get(key).ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> String {
        let names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        format!("missing field `{key}` (the row has: {})", names.join(", "))
    }

    fn text(&self, key: &str) -> Result<&str, String> {
        match self.get(key)? {
            Json::String(s) => Ok(s),
            other => Err(format!("field `{key}` must be a string, found {other}")),
        }
    }

    fn texts_of(value: &Json, key: &str) -> Result<Vec<String>, String> {
        serde_json::from_value(value.clone())
            .map_err(|_| format!("field `{key}` must be a list of strings"))
    }

    fn texts(&self, key: &str) -> Result<Vec<String>, String> {
        Self::texts_of(self.get(key)?, key)
    }

    fn labels_of(value: &Json, key: &str) -> Result<Vec<bool>, String> {
        let numbers: Vec<i64> = serde_json::from_value(value.clone())
            .map_err(|_| format!("field `{key}` must be a list of 0/1 labels"))?;
        Ok(numbers.into_iter().map(|n| n == 1).collect())
    }

    /// `field.sub` of an object field (`choices.text`, `mc2_targets.labels`).
    fn nested(&self, key: &str, sub: &str) -> Result<&Json, String> {
        self.get(key)?
            .get(sub)
            .ok_or_else(|| format!("field `{key}` must be an object with `{sub}`"))
    }
}

/// The index of `letter` among `letters`, or an error naming the field.
fn letter_index(letter: &str, letters: &[&str], key: &str) -> Result<usize, String> {
    letters.iter().position(|l| *l == letter).ok_or_else(|| {
        format!(
            "field `{key}` must be one of {}, found {letter:?}",
            letters.join(", ")
        )
    })
}

/// Python's `str.isspace`: Unicode white space and the four separators U+001C–U+001F.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_space)
}

/// The okapi / HellaSwag `preprocess`: strip, ` [title]` → `. `, drop `[…]`, one pass of
/// double spaces to one.
pub fn preprocess(text: &str) -> String {
    static BRACKETS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let brackets = BRACKETS.get_or_init(|| regex::Regex::new(r"\[.*?\]").expect("a valid regex"));
    let text = python_strip(text).replace(" [title]", ". ");
    brackets.replace_all(&text, "").replace("  ", " ")
}

/// Python's `str.capitalize`: the first character in title case, the rest lower-cased.
///
/// Title case is upper case but for characters whose upper case is several letters (ß → Ss,
/// ﬁ → Fi, և → Եւ: the first upper, the rest lower), the four Latin digraphs (ǆ → ǅ) and
/// Georgian Mkhedruli, which has no title case.
pub fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let head: String = match first {
        'Ǆ' | 'ǅ' | 'ǆ' => "ǅ".into(),
        'Ǉ' | 'ǈ' | 'ǉ' => "ǈ".into(),
        'Ǌ' | 'ǋ' | 'ǌ' => "ǋ".into(),
        'Ǳ' | 'ǲ' | 'ǳ' => "ǲ".into(),
        '\u{10D0}'..='\u{10FF}' => first.into(),
        c => {
            let mut upper = c.to_uppercase();
            let lead = upper.next().unwrap_or(c);
            std::iter::once(lead)
                .chain(upper.flat_map(char::to_lowercase))
                .collect()
        }
    };
    head + &chars.as_str().to_lowercase()
}

const LETTERS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// A row of `preset`'s format as a [`Doc`]; `prompt` (a Jinja template over the row's fields)
/// replaces the preset's question text when given.
pub fn doc(
    preset: Preset,
    row: Map<String, Json>,
    prompt: Option<&minijinja::Template>,
) -> Result<Doc, String> {
    let r = Row(&row);
    let (text, choices, gold, labels) = match preset {
        Preset::Plain => plain(&r, prompt.is_some())?,
        Preset::ArcDe => {
            let options: Vec<String> = ["option_a", "option_b", "option_c", "option_d", "option_e"]
                .iter()
                .filter_map(|key| match row.get(*key) {
                    Some(Json::String(s)) if !s.is_empty() => Some(preprocess(s)),
                    _ => None,
                })
                .collect();
            let gold = letter_index(r.text("answer")?, &LETTERS, "answer")?;
            let text = format!("Question: {}\nAnswer:", preprocess(r.text("instruction")?));
            (text, options, gold, None)
        }
        Preset::HellaswagDe | Preset::Hellaswag => {
            let context = format!("{} {}", r.text("ctx_a")?, capitalize(r.text("ctx_b")?));
            let text = preprocess(&format!("{}: {context}", r.text("activity_label")?));
            let choices = r.texts("endings")?.iter().map(|e| preprocess(e)).collect();
            let label = r.text("label")?;
            let gold = label
                .trim_start()
                .parse()
                .map_err(|_| format!("field `label` must be a choice index, found {label:?}"))?;
            (text, choices, gold, None)
        }
        Preset::MMmluDe => {
            let options = ["option_a", "option_b", "option_c", "option_d"]
                .iter()
                .map(|key| r.text(key))
                .collect::<Result<Vec<_>, _>>()?;
            let text = format!(
                "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                python_strip(r.text("instruction")?),
                options[0],
                options[1],
                options[2],
                options[3]
            );
            let gold = letter_index(r.text("answer")?, &LETTERS[..4], "answer")?;
            (text, letters(4), gold, None)
        }
        Preset::Mmlu => {
            let options = r.texts("choices")?;
            if options.len() != 4 {
                return Err(format!(
                    "field `choices` must hold 4 answers, found {}",
                    options.len()
                ));
            }
            let text = format!(
                "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                python_strip(r.text("question")?),
                options[0],
                options[1],
                options[2],
                options[3]
            );
            (
                text,
                letters(4),
                index(r.get("answer")?, 4, "answer")?,
                None,
            )
        }
        Preset::TruthfulqaDeMc1 | Preset::TruthfulqaDeMc2 => {
            let question = preprocess(r.text("question")?);
            let text = format!("{TRUTHFULQA_PRIMER}\n\nQ: {question}\nA:");
            if preset == Preset::TruthfulqaDeMc1 {
                (text, r.texts("mc1_targets_choices")?, 0, None)
            } else {
                let labels = Row::labels_of(r.get("mc2_targets_labels")?, "mc2_targets_labels")?;
                (text, r.texts("mc2_targets_choices")?, 0, Some(labels))
            }
        }
        Preset::TruthfulqaMc1 | Preset::TruthfulqaMc2 => {
            let text = format!("{TRUTHFULQA_PRIMER}\n\nQ: {}\nA:", r.text("question")?);
            let key = if preset == Preset::TruthfulqaMc1 {
                "mc1_targets"
            } else {
                "mc2_targets"
            };
            let choices = Row::texts_of(r.nested(key, "choices")?, &format!("{key}.choices"))?;
            let labels = (preset == Preset::TruthfulqaMc2)
                .then(|| Row::labels_of(r.nested(key, "labels")?, &format!("{key}.labels")))
                .transpose()?;
            (text, choices, 0, labels)
        }
        Preset::BelebeleDeuLatn => {
            let text = format!(
                "P: {}\nQ: {}\nA: {}\nB: {}\nC: {}\nD: {}\nAnswer:",
                r.text("flores_passage")?,
                python_strip(r.text("question")?),
                r.text("mc_answer1")?,
                r.text("mc_answer2")?,
                r.text("mc_answer3")?,
                r.text("mc_answer4")?
            );
            let gold = letter_index(
                r.text("correct_answer_num")?,
                &["1", "2", "3", "4"],
                "correct_answer_num",
            )?;
            (text, letters(4), gold, None)
        }
        Preset::Arc => {
            let choices = Row::texts_of(r.nested("choices", "text")?, "choices.text")?;
            let labels = Row::texts_of(r.nested("choices", "label")?, "choices.label")?;
            let key = r.text("answerKey")?;
            let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
                format!("field `answerKey` ({key:?}) is not one of choices.label {labels:?}")
            })?;
            (
                format!("Question: {}\nAnswer:", r.text("question")?),
                choices,
                gold,
                None,
            )
        }
    };
    let text = match prompt {
        Some(template) => template
            .render(minijinja::Value::from(minijinja::value::Serde(&row)))
            .map_err(|e| format!("the prompt template failed: {e}"))?,
        None => text,
    };
    if choices.len() < 2 {
        return Err(format!(
            "needs at least two choices, found {}",
            choices.len()
        ));
    }
    if gold >= choices.len() {
        return Err(format!(
            "the answer's index {gold} is not below the {} choices",
            choices.len()
        ));
    }
    if let Some(labels) = &labels
        && labels.len() != choices.len()
    {
        return Err(format!(
            "{} labels for {} choices",
            labels.len(),
            choices.len()
        ));
    }
    Ok(Doc {
        text,
        choices,
        gold,
        labels,
        row,
    })
}

/// `["A", "B", …]`.
fn letters(n: usize) -> Vec<String> {
    LETTERS[..n].iter().map(|l| l.to_string()).collect()
}

/// An index field below `n`.
fn index(value: &Json, n: usize, key: &str) -> Result<usize, String> {
    value
        .as_u64()
        .map(|i| i as usize)
        .filter(|&i| i < n)
        .ok_or_else(|| format!("field `{key}` must be an index below {n}, found {value}"))
}

/// Text, choices, answer index and mc2 labels of one row.
type PlainDoc = (String, Vec<String>, usize, Option<Vec<bool>>);

/// `{question, choices, answer, labels?}`: the text is the question (a `prompt` may replace it).
fn plain(r: &Row, has_prompt: bool) -> Result<PlainDoc, String> {
    let choices = r.texts("choices")?;
    let gold = match r.get("answer")? {
        Json::String(text) => choices
            .iter()
            .position(|c| c == text)
            .ok_or_else(|| format!("field `answer` ({text:?}) is not one of the choices"))?,
        value => index(value, choices.len(), "answer")?,
    };
    let labels = match r.0.get("labels") {
        Some(value) => Some(Row::labels_of(value, "labels")?),
        None => None,
    };
    let text = match r.0.get("question") {
        Some(Json::String(q)) => q.clone(),
        Some(other) => return Err(format!("field `question` must be a string, found {other}")),
        None if has_prompt => String::new(),
        None => return Err(r.missing("question") + " (or give the task a `prompt`)"),
    };
    Ok((text, choices, gold, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessing_is_the_harness_s() {
        assert_eq!(
            preprocess("  Woraus besteht Wasser? [title] Chemie  "),
            "Woraus besteht Wasser?. Chemie"
        );
        assert_eq!(preprocess("Helium [x]"), "Helium ");
        assert_eq!(
            preprocess("Wasserstoff und  Sauerstoff"),
            "Wasserstoff und Sauerstoff"
        );
        assert_eq!(preprocess("a    b"), "a  b", "one pass, as str.replace");
        assert_eq!(
            capitalize("er Schneidet Die Zwiebeln"),
            "Er schneidet die zwiebeln"
        );
        assert_eq!(capitalize("ßtraße"), "Sstraße");
        assert_eq!(capitalize("ﬁsch Essen"), "Fisch essen");
        assert_eq!(capitalize("ǆungla"), "ǅungla");
        assert_eq!(python_strip("Sep\u{1f} "), "Sep");
        assert_eq!(capitalize(""), "");
    }
}
