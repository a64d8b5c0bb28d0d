//! Prices and the one cost function.
//!
//! Owns the built-in price table (`prices.toml`, embedded at build time, every entry with its
//! source and date), the lookup of a model's price (a tenant's own `[[prices]]` first, then
//! the built-in table) and [`cost`], the only place a cost is computed. Cost is exact decimal
//! arithmetic ([`Decimal`]), never floating point. It does not own usage parsing (that is
//! `api::usage` and the translators) nor where costs are recorded (the ledger).

use crate::api::canonical::Usage;
use crate::config::ProviderKind;
use crate::fxhash::FxHashMap;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::str::FromStr;
use std::sync::OnceLock;

/// USD per one million tokens of each kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// Input tokens not read from a prompt cache.
    pub input: Decimal,
    /// Input tokens read from a prompt cache (the input rate when the provider has no discount).
    pub cached_input: Decimal,
    /// Tokens written to a prompt cache, where billed apart (else the input rate).
    pub cache_write: Decimal,
    /// Output tokens, reasoning tokens included.
    pub output: Decimal,
}

const PER_TOKENS: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// The cost in USD of `usage` at `price`, exact.
///
/// `usage` follows the OpenAI convention ([`Usage`]): `input_tokens` includes the cached and
/// the cache-written ones, `output_tokens` includes reasoning. So cache reads are billed at the
/// cached rate, cache writes at the cache-write rate, the rest of the input at the input rate,
/// and all output (reasoning included) at the output rate. Counts that exceed the input (a
/// provider's inconsistency) are capped at it, so nothing is billed twice or negative.
pub fn cost(usage: &Usage, price: &Price) -> Decimal {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
    let plain = usage.input_tokens - cached - written;
    let sum = Decimal::from(plain) * price.input
        + Decimal::from(cached) * price.cached_input
        + Decimal::from(written) * price.cache_write
        + Decimal::from(usage.output_tokens) * price.output;
    (sum / PER_TOKENS).normalize()
}

/// One entry of the built-in table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    provider: String,
    model: String,
    input: String,
    cached_input: Option<String>,
    cache_write: Option<String>,
    output: String,
    source: String,
    date: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    price: Vec<RawEntry>,
}

/// A built-in price with where it came from.
#[derive(Clone, Debug)]
pub struct Listed {
    pub price: Price,
    pub source: String,
    pub date: String,
}

/// The built-in table: (provider type, model) → price. Kept per provider type so a lookup
/// (every metered request) borrows the model's name instead of copying it into a key.
#[derive(Debug, Default)]
pub struct PriceTable {
    entries: FxHashMap<ProviderKind, FxHashMap<String, Listed>>,
}

/// The text of the built-in table.
pub const BUILT_IN: &str = include_str!("prices.toml");

/// Reads a decimal price: a string such as `"2.50"`, not negative.
pub fn parse_rate(s: &str) -> Result<Decimal, String> {
    let d = Decimal::from_str(s.trim())
        .map_err(|e| format!("{s:?} is not a decimal number ({e}); write e.g. \"2.50\""))?;
    if d.is_sign_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d)
}

/// A price from its written rates; cached input and cache writes default to the input rate.
pub fn price_of(
    input: &str,
    cached_input: Option<&str>,
    cache_write: Option<&str>,
    output: &str,
) -> Result<Price, String> {
    let input = parse_rate(input).map_err(|e| format!("input: {e}"))?;
    let cached_input = match cached_input {
        Some(s) => parse_rate(s).map_err(|e| format!("cached_input: {e}"))?,
        None => input,
    };
    let cache_write = match cache_write {
        Some(s) => parse_rate(s).map_err(|e| format!("cache_write: {e}"))?,
        None => input,
    };
    let output = parse_rate(output).map_err(|e| format!("output: {e}"))?;
    Ok(Price {
        input,
        cached_input,
        cache_write,
        output,
    })
}

/// Parses a price provider name as written in `prices.toml` and tenant files.
pub fn provider_kind(name: &str) -> Option<ProviderKind> {
    ProviderKind::ALL.into_iter().find(|k| k.as_str() == name)
}

impl PriceTable {
    /// Parses a table in `prices.toml`'s format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawTable = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = FxHashMap::default();
        for (i, e) in raw.price.into_iter().enumerate() {
            let at = format!("price[{i}] ({} {})", e.provider, e.model);
            let kind =
                provider_kind(&e.provider).ok_or_else(|| format!("{at}: unknown provider"))?;
            let price = price_of(
                &e.input,
                e.cached_input.as_deref(),
                e.cache_write.as_deref(),
                &e.output,
            )
            .map_err(|err| format!("{at}: {err}"))?;
            if e.source.is_empty() || e.date.is_empty() {
                return Err(format!("{at}: source and date are required"));
            }
            let listed = Listed {
                price,
                source: e.source,
                date: e.date,
            };
            let of_kind: &mut FxHashMap<String, Listed> = entries.entry(kind).or_default();
            if of_kind.insert(e.model, listed).is_some() {
                return Err(format!("{at}: listed twice"));
            }
        }
        Ok(Self { entries })
    }

    /// The built-in table (parsed once; a unit test proves it parses).
    pub fn built_in() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            PriceTable::parse(BUILT_IN).unwrap_or_else(|err| {
                tracing::error!(%err, "the built-in price table does not parse");
                PriceTable::default()
            })
        })
    }

    /// The listed price of `model` on `kind`, by the names [`candidates`] gives.
    pub fn get(&self, kind: ProviderKind, model: &str) -> Option<&Listed> {
        let of_kind = self.entries.get(&kind)?;
        candidates(model).find_map(|m| of_kind.get(m))
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(FxHashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The names a model's price is looked up under, in order: as given, without a trailing
/// `-YYYY-MM-DD` date, and without a Bedrock cross-region prefix (`us.` …), each combination.
pub fn candidates(model: &str) -> impl Iterator<Item = &str> {
    let unprefixed = ["us.", "eu.", "apac.", "global.", "us-gov."]
        .iter()
        .find_map(|p| model.strip_prefix(p));
    // Four names at most, listed outright: a chain of `flat_map`s over arrays moved its
    // state about 30 times a lookup (every metered request prices its model).
    [
        Some(model),
        undated(model),
        unprefixed,
        unprefixed.and_then(undated),
    ]
    .into_iter()
    .flatten()
}

/// `gpt-4o-2024-08-06` → `gpt-4o`.
fn undated(model: &str) -> Option<&str> {
    let (head, tail) = model.split_at_checked(model.len().checked_sub(11)?)?;
    let t = tail.as_bytes();
    let dated = t[0] == b'-'
        && t[5] == b'-'
        && t[8] == b'-'
        && t.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 0 | 5 | 8) || c.is_ascii_digit());
    dated.then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    fn price(i: &str, c: &str, w: &str, o: &str) -> Price {
        Price {
            input: d(i),
            cached_input: d(c),
            cache_write: d(w),
            output: d(o),
        }
    }

    #[test]
    fn cost_bills_each_kind_of_token_at_its_rate_to_the_last_decimal() {
        // 1000 input of which 400 read from and 250 written to the cache, 321 output of which
        // 100 reasoning: 350 × 3.00 + 400 × 0.30 + 250 × 3.75 + 321 × 15.00, per million.
        let usage = Usage {
            input_tokens: 1000,
            cached_input_tokens: 400,
            cache_write_tokens: 250,
            output_tokens: 321,
            reasoning_tokens: 100,
        };
        let p = price("3.00", "0.30", "3.75", "15.00");
        // 1050 + 120 + 937.5 + 4815 = 6922.5 → 0.0069225
        assert_eq!(cost(&usage, &p).to_string(), "0.0069225");
    }

    #[test]
    fn cost_of_cheap_models_keeps_every_digit() {
        let usage = Usage {
            input_tokens: 7,
            cached_input_tokens: 3,
            output_tokens: 1,
            ..Usage::default()
        };
        // 4 × 0.15 + 3 × 0.075 + 1 × 0.60 = 0.6 + 0.225 + 0.6 = 1.425 per million
        let p = price("0.15", "0.075", "0.15", "0.60");
        assert_eq!(cost(&usage, &p).to_string(), "0.000001425");
        assert_eq!(cost(&Usage::default(), &p), Decimal::ZERO);
    }

    #[test]
    fn cached_tokens_above_input_are_not_billed_negative() {
        let usage = Usage {
            input_tokens: 10,
            cached_input_tokens: 50,
            cache_write_tokens: 5,
            ..Usage::default()
        };
        let p = price("1", "0.5", "2", "1");
        assert_eq!(cost(&usage, &p).to_string(), "0.000005");
        let usage = Usage {
            input_tokens: 10,
            cached_input_tokens: 6,
            cache_write_tokens: 9,
            ..Usage::default()
        };
        // 6 × 0.5 + 4 × 2 = 11 per million
        assert_eq!(cost(&usage, &p).to_string(), "0.000011");
    }

    #[test]
    fn the_built_in_table_parses_and_covers_the_example_tenants_models() {
        let table = PriceTable::parse(BUILT_IN).expect("prices.toml parses");
        assert!(table.len() >= 30, "{}", table.len());
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o4-mini",
            "gpt-4o-2024-08-06",
        ] {
            assert!(table.get(ProviderKind::OpenAi, model).is_some(), "{model}");
        }
        let mini = table
            .get(ProviderKind::OpenAi, "gpt-4o-mini")
            .expect("listed");
        assert_eq!(mini.price, price("0.15", "0.075", "0.15", "0.60"));
        assert!(mini.source.starts_with("https://"));
        let haiku = table
            .get(
                ProviderKind::Bedrock,
                "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            )
            .expect("prefix stripped");
        assert_eq!(haiku.price.cache_write, d("1.00"));
        assert!(
            table
                .get(ProviderKind::Gemini, "gemini-2.5-flash")
                .is_some()
        );
        assert!(table.get(ProviderKind::OpenAi, "no-such-model").is_none());
        // A price is per provider: Gemini's model is not OpenAI's.
        assert!(
            table
                .get(ProviderKind::OpenAi, "gemini-2.5-flash")
                .is_none()
        );
    }

    #[test]
    fn model_names_are_tried_undated_and_unprefixed() {
        let names: Vec<&str> = candidates("us.claude-x-2024-10-22").collect();
        assert_eq!(
            names,
            [
                "us.claude-x-2024-10-22",
                "us.claude-x",
                "claude-x-2024-10-22",
                "claude-x"
            ]
        );
        assert_eq!(candidates("gpt-4o").collect::<Vec<_>>(), ["gpt-4o"]);
        assert_eq!(undated("o1-2024-12-17"), Some("o1"));
        assert_eq!(undated("x-2024-1a-17"), None);
        assert_eq!(undated("short"), None);
    }

    #[test]
    fn rates_are_decimal_strings_and_not_negative() {
        assert_eq!(parse_rate("0.075"), Ok(d("0.075")));
        assert!(parse_rate("abc").is_err());
        assert!(parse_rate("-1").is_err());
        let p = price_of("2", None, None, "8").expect("valid");
        assert_eq!(p.cached_input, d("2"));
        assert_eq!(p.cache_write, d("2"));
        assert!(
            matches!(price_of("2", Some("x"), None, "8"), Err(e) if e.starts_with("cached_input"))
        );
    }
}
