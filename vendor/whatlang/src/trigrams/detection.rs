use hashbrown::HashMap;

#[cfg(test)]
use super::LangProfile;
use super::LangProfileList;
use super::utils::{TrigramsWithPositions, get_trigrams_with_positions};
use super::{ARABIC_LANGS, CYRILLIC_LANGS, DEVANAGARI_LANGS, HEBREW_LANGS, LATIN_LANGS};
use super::{MAX_TOTAL_DISTANCE, MAX_TRIGRAM_DISTANCE, Trigram};
use crate::Lang;
use crate::core::{FilterList, Info, InternalQuery, Text, calculate_confidence};
use crate::scripts::grouping::MultiLangScript;

#[derive(Debug)]
pub struct RawOutcome {
    pub trigrams_count: usize,
    #[allow(dead_code)]
    pub raw_distances: Vec<(Lang, u32)>,
    pub scores: Vec<(Lang, f64)>,
}

#[inline]
pub fn detect(iquery: &InternalQuery) -> Option<Info> {
    let raw_outcome = raw_detect(iquery);
    let RawOutcome {
        trigrams_count,
        scores,
        ..
    } = raw_outcome;

    let mut raw_scores_iter = scores.into_iter();

    let opt_lang_score1 = raw_scores_iter.next();
    let opt_lang_score2 = raw_scores_iter.next();

    // TODO: Logic is duplicated in alphabets. Consider refactoring
    opt_lang_score1.map(|(lang1, score1)| {
        let script = iquery.multi_lang_script.to_script();
        let confidence = if let Some((_, score2)) = opt_lang_score2 {
            calculate_confidence(score1, score2, trigrams_count)
        } else {
            1.0
        };
        Info::new(script, lang1, confidence)
    })
}

#[inline]
pub fn raw_detect(iquery: &InternalQuery) -> RawOutcome {
    calculate_scores_in_profiles(&iquery.text, iquery.filter_list, iquery.multi_lang_script)
}

fn script_to_lang_profile_list(script: MultiLangScript) -> LangProfileList {
    use MultiLangScript as MLS;
    match script {
        MLS::Latin => LATIN_LANGS,
        MLS::Cyrillic => CYRILLIC_LANGS,
        MLS::Arabic => ARABIC_LANGS,
        MLS::Devanagari => DEVANAGARI_LANGS,
        MLS::Hebrew => HEBREW_LANGS,
    }
}

#[inline]
fn calculate_scores_in_profiles(
    text: &Text,
    filter_list: &FilterList,
    script: MultiLangScript,
) -> RawOutcome {
    let lang_profile_list = script_to_lang_profile_list(script);
    let mut lang_distances: Vec<(Lang, u32)> = vec![];

    let TrigramsWithPositions {
        trigram_positions, ..
    } = get_trigrams_with_positions(&text.lowercase());
    let unique_trigrams_count = trigram_positions.len();

    // flow: one index lookup per text trigram instead of one text lookup per profile trigram
    // of every language; the distances are the same integers `calculate_distance` computes.
    let matched = matched_closeness(
        profile_index(script),
        &trigram_positions,
        lang_profile_list.len(),
    );
    for (slot, &(lang, lang_trigrams)) in lang_profile_list.iter().enumerate() {
        if !filter_list.is_allowed(lang) {
            continue;
        }
        let dist = indexed_distance(lang_trigrams.len(), matched[slot], unique_trigrams_count);
        lang_distances.push(((lang), dist));
    }

    // Sort languages by distance
    lang_distances.sort_unstable_by_key(|(_, dist)| *dist);

    let max_dist = unique_trigrams_count as u32 * MAX_TRIGRAM_DISTANCE;

    let raw_scores = lang_distances
        .iter()
        .map(|&(lang, distance)| (lang, distance_to_raw_score(distance, max_dist)))
        .collect();

    RawOutcome {
        trigrams_count: unique_trigrams_count,
        scores: raw_scores,
        raw_distances: lang_distances,
    }
}

/// flow: for each trigram of a script's profiles, every `(profile slot, rank)` it has there.
type ProfileIndex = HashMap<Trigram, Vec<(u16, u16)>>;

/// flow: the index of `script`'s profile list, built on first use.
fn profile_index(script: MultiLangScript) -> &'static ProfileIndex {
    static INDEXES: [std::sync::OnceLock<ProfileIndex>; 5] =
        [const { std::sync::OnceLock::new() }; 5];
    INDEXES[script as usize].get_or_init(|| {
        let mut index = ProfileIndex::new();
        for (slot, (_, profile)) in script_to_lang_profile_list(script).iter().enumerate() {
            for (rank, &trigram) in profile.iter().enumerate() {
                index
                    .entry(trigram)
                    .or_default()
                    .push((slot as u16, rank as u16));
            }
        }
        index
    })
}

/// flow: per profile slot, `Σ (MAX_TRIGRAM_DISTANCE − |text position − rank|)` over the
/// profile's trigrams found in the text. A profile's distance is
/// `len · MAX_TRIGRAM_DISTANCE` minus this: a missing trigram costs `MAX_TRIGRAM_DISTANCE`,
/// a present one `|position − rank|`.
fn matched_closeness(
    index: &ProfileIndex,
    text_trigrams: &HashMap<Trigram, u32>,
    profiles: usize,
) -> Vec<i64> {
    let mut matched = vec![0i64; profiles];
    for (trigram, &position) in text_trigrams {
        for &(slot, rank) in index.get(trigram).map_or(&[][..], Vec::as_slice) {
            let distance = (position as i64 - rank as i64).abs();
            matched[slot as usize] += MAX_TRIGRAM_DISTANCE as i64 - distance;
        }
    }
    matched
}

/// flow: a profile's distance from its length and its [`matched_closeness`], for a text of
/// `count` unique trigrams.
fn indexed_distance(profile_len: usize, matched: i64, count: usize) -> u32 {
    let all_missing = profile_len as i64 * MAX_TRIGRAM_DISTANCE as i64;
    finish_distance((all_missing - matched) as u32, count)
}

/// The end of `calculate_distance`: the credit for short texts and the clamp.
#[inline]
fn finish_distance(mut total_dist: u32, count: usize) -> u32 {
    let count = count as u32;
    if MAX_TRIGRAM_DISTANCE > count {
        let delta = MAX_TRIGRAM_DISTANCE - count;
        total_dist -= delta * MAX_TRIGRAM_DISTANCE;
    }
    total_dist.clamp(0, MAX_TOTAL_DISTANCE)
}

/// The upstream distance of one profile (kept to test the index against).
#[cfg(test)]
#[inline]
fn calculate_distance(lang_trigrams: LangProfile, text_trigrams: &HashMap<Trigram, u32>) -> u32 {
    let mut total_dist = 0u32;

    for (i, &trigram) in lang_trigrams.iter().enumerate() {
        let dist = match text_trigrams.get(&trigram) {
            Some(&n) => (n as i32 - i as i32).unsigned_abs(),
            None => MAX_TRIGRAM_DISTANCE,
        };
        total_dist += dist;
    }

    finish_distance(total_dist, text_trigrams.len())
}

#[inline]
fn distance_to_raw_score(distance: u32, max_distance: u32) -> f64 {
    let similarity = max_distance - distance;
    similarity as f64 / max_distance as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_gives_upstream_distances_for_every_profile() {
        let texts = [
            "Die Ordnung muss für immer in diesem Codebase bleiben",
            "The quick brown fox jumps over the lazy dog, again and again and again.",
            "Ceci n'est pas une pipe, mais une phrase en français assez longue pour compter.",
            "a",
            "Zażółć gęślą jaźń — pójdźże, kiń tę chmurność w głąb flaszy!",
            "Der Zug nach Berlin fährt heute später, weil es regnet; morgen scheint die Sonne.",
        ];
        for text in texts {
            let positions =
                get_trigrams_with_positions(&Text::new(text).lowercase()).trigram_positions;
            for script in [
                MultiLangScript::Latin,
                MultiLangScript::Cyrillic,
                MultiLangScript::Arabic,
                MultiLangScript::Devanagari,
                MultiLangScript::Hebrew,
            ] {
                let list = script_to_lang_profile_list(script);
                let matched = matched_closeness(profile_index(script), &positions, list.len());
                for (slot, &(lang, profile)) in list.iter().enumerate() {
                    let indexed = indexed_distance(profile.len(), matched[slot], positions.len());
                    assert_eq!(
                        indexed,
                        calculate_distance(profile, &positions),
                        "{lang:?} on {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn test_when_german_is_given() {
        let text = "Die Ordnung muss für immer in diesem Codebase bleiben";
        let iq = InternalQuery {
            text: Text::new(text),
            filter_list: &FilterList::default(),
            multi_lang_script: MultiLangScript::Latin,
        };
        let raw_outcome = raw_detect(&iq);

        assert_eq!(raw_outcome.trigrams_count, 50);

        let &(first_lang, first_score) = raw_outcome.scores.first().unwrap();
        let &(_last_lang, last_score) = raw_outcome.scores.last().unwrap();

        assert_eq!(first_lang, Lang::Deu);

        assert!(first_score >= 0.0);
        assert!(first_score <= 1.0);

        assert!(last_score >= 0.0);
        assert!(last_score <= 1.0);
    }
}
