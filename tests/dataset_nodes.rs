//! `dataset.load`, `dataset.filter` and `dataset.split` through the real binary: every format and
//! column preset, every filter rule counted in `stats.json`, a seeded split, and clear errors
//! for malformed inputs.

mod support;

use serde_json::Value;
use support::{Project, jsonl};

fn stats(p: &Project, dir: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p.path().join(dir).join("stats.json")).unwrap())
        .unwrap()
}

fn load(p: &Project, file: &str, out: &str, with: &[&str]) -> support::Run {
    let path = format!("path={}", p.path().join(file).display());
    let mut args = vec!["exec", "dataset.load", "--with", &path, "--out", out];
    for w in with {
        args.extend(["--with", w]);
    }
    p.flow(&args)
}

#[test]
fn load_reads_every_format_and_preset() {
    let p = Project::new();
    p.write(
        "trl.jsonl",
        "{\"prompt\":\"P1\",\"chosen\":\"C1\",\"rejected\":\"R1\",\"lang\":\"de\"}\n\n{\"id\":\"x\",\"prompt\":\"P2\",\"chosen\":\"C2\",\"rejected\":\"R2\",\"system\":\"S\"}\n",
    );
    load(&p, "trl.jsonl", "trl", &[]).expect_code(0);
    let rows = jsonl(&p.path().join("trl/dataset/data.jsonl"));
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["prompt"].as_str(), rows[0]["lang"].as_str()),
        (Some("P1"), Some("de"))
    );
    assert_eq!(rows[0]["id"].as_str().unwrap().len(), 16, "a content id");
    assert_eq!(
        (rows[1]["id"].as_str(), rows[1]["system"].as_str()),
        (Some("x"), Some("S"))
    );
    assert_eq!(stats(&p, "trl/dataset")["rows_out"], 2);

    p.write(
        "orca.json",
        r#"[{"system":"Sei hilfreich.","question":"Q","chosen":"gut","rejected":"schlecht"}]"#,
    );
    load(&p, "orca.json", "orca", &["columns=intel_orca"]).expect_code(0);
    let orca = &jsonl(&p.path().join("orca/dataset/data.jsonl"))[0];
    assert_eq!(
        (orca["prompt"].as_str(), orca["system"].as_str()),
        (Some("Q"), Some("Sei hilfreich."))
    );

    p.write(
        "ranking.jsonl",
        "{\"instruction\":\"Übersetze\",\"input\":\"Hallo\",\"output\":[\"Hello\",\"Hi there friend\"]}\n",
    );
    load(&p, "ranking.jsonl", "ranking", &["columns=ranking"]).expect_code(0);
    let ranking = &jsonl(&p.path().join("ranking/dataset/data.jsonl"))[0];
    assert_eq!(
        (
            ranking["prompt"].as_str(),
            ranking["chosen"].as_str(),
            ranking["rejected"].as_str()
        ),
        (
            Some("Übersetze\nHallo"),
            Some("Hello"),
            Some("Hi there friend")
        )
    );

    p.write(
        "pairs.csv",
        "frage,gut,schlecht\n\"Wie, bitte?\",Ja,Nein\nZwei,A,B\n",
    );
    load(
        &p,
        "pairs.csv",
        "csv",
        &[
            "columns.prompt=frage",
            "columns.chosen=gut",
            "columns.rejected=schlecht",
        ],
    )
    .expect_code(0);
    let csv = jsonl(&p.path().join("csv/dataset/data.jsonl"));
    assert_eq!(
        (csv.len(), csv[0]["prompt"].as_str()),
        (2, Some("Wie, bitte?"))
    );
}

#[test]
fn load_shuffles_and_limits_deterministically() {
    let p = Project::new();
    let text: String = (0..20)
        .map(|i| {
            format!("{{\"id\":\"{i}\",\"prompt\":\"p{i}\",\"chosen\":\"c\",\"rejected\":\"r\"}}\n")
        })
        .collect();
    p.write("many.jsonl", &text);
    let ids = |out: &str| -> Vec<String> {
        jsonl(&p.path().join(out).join("dataset/data.jsonl"))
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    load(
        &p,
        "many.jsonl",
        "a",
        &["shuffle=true", "seed=3", "limit=5"],
    )
    .expect_code(0);
    load(
        &p,
        "many.jsonl",
        "b",
        &["shuffle=true", "seed=3", "limit=5"],
    )
    .expect_code(0);
    assert_eq!(ids("a").len(), 5);
    assert_eq!(ids("a"), ids("b"));
    assert_ne!(ids("a"), ["0", "1", "2", "3", "4"]);
    assert_eq!(stats(&p, "a/dataset")["dropped"]["limit"], 15);
}

#[test]
fn malformed_sources_name_the_file_and_line() {
    let p = Project::new();
    p.write(
        "bad.jsonl",
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{broken\n",
    );
    let bad = load(&p, "bad.jsonl", "o1", &[]).expect_code(1);
    assert!(
        bad.stderr.contains("bad.jsonl:2: bad JSON"),
        "{}",
        bad.stderr
    );
    p.write(
        "orca.jsonl",
        "{\"system\":\"s\",\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n",
    );
    let missing = load(&p, "orca.jsonl", "o2", &["columns=intel_orca"]).expect_code(1);
    assert!(
        missing
            .stderr
            .contains("orca.jsonl:1: missing column `question`"),
        "{}",
        missing.stderr
    );
    p.write("empty.jsonl", "");
    let empty = load(&p, "empty.jsonl", "o3", &[]).expect_code(1);
    assert!(empty.stderr.contains("no rows"), "{}", empty.stderr);
    p.write(
        "typed.jsonl",
        "{\"prompt\":1,\"chosen\":\"b\",\"rejected\":\"c\"}\n",
    );
    let typed = load(&p, "typed.jsonl", "o4", &[]).expect_code(1);
    assert!(
        typed
            .stderr
            .contains("typed.jsonl:1: column `prompt` must be a string, found 1"),
        "{}",
        typed.stderr
    );
    p.write("data.txt", "x");
    let unknown = load(&p, "data.txt", "o5", &[]).expect_code(1);
    assert!(
        unknown
            .stderr
            .contains("set `format: jsonl|json|csv|parquet`"),
        "{}",
        unknown.stderr
    );
    assert!(
        !p.path().join("o1/dataset/data.jsonl").exists(),
        "nothing half-written"
    );
}

#[test]
fn filter_applies_and_counts_every_rule() {
    let p = Project::new();
    let rows = [
        (
            "Was ist die Hauptstadt von Frankreich?",
            "Die Hauptstadt von Frankreich ist Paris, eine sehr schöne Stadt an der Seine.",
            "Keine Ahnung.",
        ),
        (
            "Was ist die Hauptstadt von  frankreich?",
            "Paris ist die Hauptstadt, und sie liegt an der Seine im Norden des Landes.",
            "Weiß nicht.",
        ),
        (
            "Wie heißt der größte Planet?",
            "The largest planet in our solar system is Jupiter, a gas giant.",
            "Mars.",
        ),
        ("Gleich?", "Dieselbe Antwort.", "Dieselbe Antwort."),
        ("Leer?", "", "Etwas."),
        (
            "Beleidigung?",
            "Das ist eine dumme Frage, aber die Antwort lautet: ja, das stimmt wirklich.",
            "Nein.",
        ),
        ("Kurz?", "Ja", "Nein, das ist nicht richtig."),
        (
            "Erzähl mir bitte etwas über den Rhein und seine Geschichte.",
            "Der Rhein ist einer der wichtigsten Flüsse Europas. Er entspringt in den Schweizer Alpen, fließt durch den Bodensee, bildet die Grenze zu Frankreich und mündet nach mehr als tausend Kilometern in den Niederlanden in die Nordsee. Schon die Römer nutzten ihn als Handelsweg.",
            "Kein Interesse.",
        ),
        (
            "Erzähl mir bitte etwas über den Rhein und seine Geschichte heute.",
            "Der Rhein ist einer der wichtigsten Flüsse Europas. Er entspringt in den Schweizer Alpen, fließt durch den Bodensee, bildet die Grenze zu Frankreich und mündet nach mehr als tausend Kilometern in den Niederlanden in die Nordsee. Schon die Römer nutzten ihn als Handelsweg.",
            "Kein Interesse.",
        ),
    ];
    let text: String = rows
        .iter()
        .map(|(prompt, chosen, rejected)| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected})
            )
        })
        .collect();
    p.write("in.jsonl", &text);
    p.flow(&[
        "exec",
        "dataset.filter",
        "--input",
        "dataset=in.jsonl",
        "--with",
        "language=de",
        "--with",
        "min_confidence=0.0",
        "--with",
        "min_chars=3",
        "--with",
        "near_dup_threshold=0.7",
        "--with",
        "blocklist=[\"(?i)dumme\"]",
        "--out",
        "out",
    ])
    .expect_code(0);
    let s = stats(&p, "out/dataset");
    assert_eq!(s["rows_in"], 9);
    assert_eq!(s["rows_out"], 2, "{s}");
    for (reason, count) in [
        ("duplicate_prompt", 1),
        ("language", 1),
        ("identical", 1),
        ("empty", 1),
        ("blocklist", 1),
        ("too_short", 1),
        ("near_duplicate", 1),
    ] {
        assert_eq!(s["dropped"][reason], count, "{reason}: {s}");
    }
    let kept = jsonl(&p.path().join("out/dataset/data.jsonl"));
    assert!(kept[0]["prompt"].as_str().unwrap().contains("Frankreich"));

    p.flow(&[
        "exec",
        "dataset.filter",
        "--input",
        "dataset=in.jsonl",
        "--input",
        &format!(
            "tokenizer={}",
            support::fixtures().join("mistral-tiny/base").display()
        ),
        "--with",
        "max_tokens=30",
        "--with",
        "dedup_prompts=false",
        "--with",
        "drop_identical=false",
        "--out",
        "tokens",
    ])
    .expect_code(0);
    let t = stats(&p, "tokens/dataset");
    assert!(
        t["dropped"]["too_many_tokens"].as_u64().unwrap() >= 3,
        "{t}"
    );
    p.write(
        "dup.jsonl",
        "{\"prompt\":\"Wie alt ist der Rhein?\",\"chosen\":\"Sehr alt.\",\"rejected\":\"Jung.\"}\n{\"prompt\":\"Wie  alt ist der RHEIN?\",\"chosen\":\"Uralt.\",\"rejected\":\"Neu.\"}\n",
    );
    for (dedup, kept) in [("true", 1), ("false", 2)] {
        let out = format!("dup-{dedup}");
        p.flow(&[
            "exec",
            "dataset.filter",
            "--input",
            "dataset=dup.jsonl",
            "--with",
            &format!("dedup_prompts={dedup}"),
            "--out",
            &out,
        ])
        .expect_code(0);
        let d = stats(&p, &format!("{out}/dataset"));
        assert_eq!(d["rows_out"], kept, "dedup_prompts={dedup}: {d}");
    }
}

#[test]
fn split_is_seeded_disjoint_and_complete() {
    let p = Project::new();
    let data = support::golden_dataset(&p, 5);
    let split = |out: &str, seed: &str| {
        p.flow(&[
            "exec",
            "dataset.split",
            "--input",
            &format!("dataset={}", data.display()),
            "--with",
            "eval_rows=7",
            "--with",
            seed,
            "--out",
            out,
        ])
        .expect_code(0);
        let ids = |part: &str| -> Vec<String> {
            jsonl(&p.path().join(out).join(part).join("data.jsonl"))
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect()
        };
        (ids("train"), ids("eval"))
    };
    let (train, eval) = split("a", "seed=1");
    assert_eq!((train.len(), eval.len()), (23, 7));
    assert!(eval.iter().all(|id| !train.contains(id)));
    assert_eq!(split("b", "seed=1"), (train.clone(), eval.clone()));
    assert_ne!(split("c", "seed=2").1, eval);
}

#[test]
fn bad_dataset_params_fail_validation() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        r#"name: bad-data
nodes:
  filter:
    uses: dataset.filter
    with: { dataset: in.jsonl, language: klingon, blocklist: ["(unclosed"] }
  split:
    uses: dataset.split
    with: { dataset: in.jsonl, eval_fraction: 0.1, eval_rows: 3 }
  load:
    uses: dataset.load
    with: { path: in.jsonl, columns: alpaca }
"#,
    );
    let run = p.flow(&["validate", "bad.yaml"]).expect_code(2);
    for expected in [
        "nodes.filter.with.language",
        "unknown language code `klingon`",
        "nodes.split.with.eval_rows",
        "give eval_fraction or eval_rows, not both",
        "nodes.load.with.columns",
    ] {
        assert!(
            run.stderr.contains(expected),
            "missing `{expected}` in\n{}",
            run.stderr
        );
    }
}

#[test]
fn conversational_rows_are_rendered_with_a_chat_template() {
    let p = Project::new();
    p.write(
        "chat.jsonl",
        concat!(
            r#"{"prompt":[{"role":"user","content":"Hallo?"}],"chosen":[{"role":"assistant","content":"Guten Tag!"}],"rejected":[{"role":"assistant","content":"Was?"}]}"#,
            "\n",
            r#"{"chosen":[{"role":"user","content":"Wie geht's?"},{"role":"assistant","content":"Gut, danke."}],"rejected":[{"role":"user","content":"Wie geht's?"},{"role":"assistant","content":"Egal."}]}"#,
            "\n"
        ),
    );
    load(&p, "chat.jsonl", "chatml", &["chat_template=chatml"]).expect_code(0);
    let rows = jsonl(&p.path().join("chatml/dataset/data.jsonl"));
    assert_eq!(
        rows[0]["prompt"].as_str(),
        Some("<|im_start|>user\nHallo?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(rows[0]["chosen"].as_str(), Some("Guten Tag!<|im_end|>\n"));
    assert_eq!(
        (rows[1]["prompt"].as_str(), rows[1]["rejected"].as_str()),
        (
            Some("<|im_start|>user\nWie geht's?<|im_end|>\n<|im_start|>assistant\n"),
            Some("Egal.<|im_end|>\n")
        ),
        "implicit prompt: the shared messages"
    );
    load(&p, "chat.jsonl", "mistral", &["chat_template=mistral"]).expect_code(0);
    let mistral = jsonl(&p.path().join("mistral/dataset/data.jsonl"));
    assert_eq!(
        (mistral[0]["prompt"].as_str(), mistral[0]["chosen"].as_str()),
        (Some("<s>[INST] Hallo? [/INST]"), Some("Guten Tag!</s>"))
    );
    assert_eq!(
        mistral[0]["templated"], true,
        "tokenized without adding BOS again"
    );
    std::fs::create_dir_all(p.path().join("tok")).unwrap();
    p.write(
        "tok/tokenizer_config.json",
        r#"{"eos_token":"<e>","chat_template":"{% for m in messages %}{{ m.role|upper }}: {{ m.content.strip() }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"}"#,
    );
    let dir = format!("chat_template={}", p.path().join("tok").display());
    load(&p, "chat.jsonl", "model", &[&dir]).expect_code(0);
    let model = jsonl(&p.path().join("model/dataset/data.jsonl"));
    // transformers renders with `trim_blocks`: the newline after a block tag is dropped.
    assert_eq!(model[0]["prompt"].as_str(), Some("USER: Hallo?ASSISTANT: "));
    let missing = load(&p, "chat.jsonl", "none", &[]).expect_code(1);
    assert!(
        missing
            .stderr
            .contains("chat.jsonl:1: the answers are message lists"),
        "{}",
        missing.stderr
    );
}

/// Writes a Parquet file with one string column per name and an INT64 column `score`.
fn write_parquet(path: &std::path::Path, columns: &[(&str, Vec<&str>)], prompt_as_int: bool) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let fields: Vec<String> = columns
        .iter()
        .map(|(name, _)| {
            if prompt_as_int && *name == "prompt" {
                format!("REQUIRED INT64 {name};")
            } else {
                format!("REQUIRED BYTE_ARRAY {name} (UTF8);")
            }
        })
        .collect();
    let schema = parquet::schema::parser::parse_message_type(&format!(
        "message pairs {{ {} }}",
        fields.join(" ")
    ))
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(
        file,
        std::sync::Arc::new(schema),
        std::sync::Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut index = 0;
    while let Some(mut column) = group.next_column().unwrap() {
        let (name, values) = &columns[index];
        if prompt_as_int && *name == "prompt" {
            let numbers: Vec<i64> = (0..values.len() as i64).collect();
            column
                .typed::<Int64Type>()
                .write_batch(&numbers, None, None)
                .unwrap();
        } else {
            let bytes: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
            column
                .typed::<ByteArrayType>()
                .write_batch(&bytes, None, None)
                .unwrap();
        }
        column.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_sources_load_and_wrong_types_are_named() {
    let p = Project::new();
    let columns = [
        ("prompt", vec!["Wie spät ist es?", "Wo ist Bonn?"]),
        ("chosen", vec!["Es ist zwölf Uhr.", "Bonn liegt am Rhein."]),
        ("rejected", vec!["Egal.", "Keine Ahnung."]),
        ("lang", vec!["de", "de"]),
    ];
    write_parquet(&p.path().join("pairs.parquet"), &columns, false);
    load(&p, "pairs.parquet", "ok", &[]).expect_code(0);
    let rows = jsonl(&p.path().join("ok/dataset/data.jsonl"));
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1]["prompt"].as_str(), rows[1]["lang"].as_str()),
        (Some("Wo ist Bonn?"), Some("de"))
    );
    write_parquet(&p.path().join("typed.parquet"), &columns, true);
    let typed = load(&p, "typed.parquet", "bad", &[]).expect_code(1);
    assert!(
        typed
            .stderr
            .contains("typed.parquet: row 1: column `prompt` must be a string, found 0"),
        "{}",
        typed.stderr
    );
    p.write("broken.parquet", "not parquet");
    let broken = load(&p, "broken.parquet", "broken", &[]).expect_code(1);
    assert!(
        broken.stderr.contains("not a readable Parquet file"),
        "{}",
        broken.stderr
    );
}

#[test]
fn ids_headers_and_columns_are_checked_where_they_are_read() {
    let p = Project::new();
    let row = |id: &str, prompt: &str| {
        format!("{{{id}\"prompt\":\"{prompt}\",\"chosen\":\"c\",\"rejected\":\"r\"}}\n")
    };
    p.write(
        "clash.jsonl",
        &[
            row("\"id\":7,", "a"),
            row("", "b"),
            row("\"id\":\"7\",", "c"),
        ]
        .concat(),
    );
    let clash = load(&p, "clash.jsonl", "clash", &[]).expect_code(1);
    assert!(
        clash
            .stderr
            .contains("clash.jsonl:3: id `7` is also the id of a different pair at")
            && clash.stderr.contains("clash.jsonl:1"),
        "{}",
        clash.stderr
    );
    assert!(!p.path().join("clash").exists(), "nothing written");
    p.write("repeat.jsonl", &[row("", "a"), row("", "a")].concat());
    load(&p, "repeat.jsonl", "repeat", &[]).expect_code(0);
    assert_eq!(
        jsonl(&p.path().join("repeat/dataset/data.jsonl")).len(),
        2,
        "identical rows may repeat"
    );
    for (id, found) in [
        ("\"id\":[1],", "[1]"),
        ("\"id\":\" \",", "\" \""),
        ("\"id\":true,", "true"),
    ] {
        p.write("bad_id.jsonl", &row(id, "a"));
        let bad = load(&p, "bad_id.jsonl", "bad_id", &[]).expect_code(1);
        assert!(
            bad.stderr.contains(&format!(
                "bad_id.jsonl:1: column `id` must be a non-empty string or a number, found {found}"
            )),
            "{}",
            bad.stderr
        );
    }
    p.write("few.jsonl", "{\"prompt\":\"p\",\"answer\":\"a\"}\n");
    let few = load(&p, "few.jsonl", "few", &[]).expect_code(1);
    assert!(
        few.stderr.contains(
            "few.jsonl:1: missing columns `chosen`, `rejected` (the row has: answer, prompt)"
        ),
        "{}",
        few.stderr
    );
    p.write("twice.csv", "prompt,chosen,chosen,rejected\np,c,d,r\n");
    let twice = load(&p, "twice.csv", "twice", &[]).expect_code(1);
    assert!(
        twice
            .stderr
            .contains("twice.csv:1: column `chosen` appears twice in the header"),
        "{}",
        twice.stderr
    );
    p.write("lines.json", &[row("", "a"), row("", "b")].concat());
    load(&p, "lines.json", "lines", &[]).expect_code(0);
    assert_eq!(
        jsonl(&p.path().join("lines/dataset/data.jsonl")).len(),
        2,
        "JSON Lines in a .json file"
    );
}
