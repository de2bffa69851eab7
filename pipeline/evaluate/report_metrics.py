"""Report text metrics as MedRegA reports them for grounded report generation: BLEU-1..4, ROUGE-L and METEOR.

Computed with maintained libraries on the kit's tokens (:func:`pipeline.evaluate.text.tokenize`: jieba words for
Chinese, lower-cased words for English; grounding tags and boxes removed first):

* **BLEU-n** -- corpus BLEU with uniform weights up to n-grams (``sacrebleu.metrics.BLEU`` with
  ``max_ngram_order=n``, ``tokenize="none"`` on the kit's tokens, its default exponential smoothing), 0..1;
* **ROUGE-L** -- mean over samples of the LCS F-measure (``rouge_score.rouge_scorer`` with a whitespace tokenizer,
  since its default tokenizer drops non-ASCII text);
* **METEOR** -- mean over samples of ``nltk.translate.meteor_score`` (exact, Porter-stem and WordNet-synonym
  matches).  Synonyms need WordNet data, which NLTK downloads from the network at run time; this kit uses, in
  order: NLTK's own ``wordnet`` corpus when it is installed, the Debian/Ubuntu ``wordnet-base`` package
  (``/usr/share/wordnet``, WordNet 3.0; ``apt-get install wordnet-base``), else no synonym stage.  The report says
  which (``METEOR_wordnet``).  For Chinese there are no WordNet synonyms: METEOR is exact-match only.

Samples are scored per group (task x language, and per ``meta.text_source``, so report-grounded and
template rows can be compared); a sample is ``(hypothesis tokens, reference tokens)``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["DEBIAN_WORDNET", "load_wordnet", "text_scores"]

DEBIAN_WORDNET = Path("/usr/share/wordnet")
#: WordNet 3.0's lexicographer files, in number order (lexnames(5WN)); the Debian package has no `lexnames` file
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
Pair = tuple[list[str], list[str]]


class _NoWordNet:
    """Stands in when no WordNet data is installed: METEOR without its synonym stage."""

    def synsets(self, *_args: Any, **_kw: Any) -> list[Any]:
        return []


def _debian_reader(root: Path) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    lexnames = "".join(f"{i:02d}\t{n}\t{_POS[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES))

    class DebianWordNet(WordNetCorpusReader):
        def open(self, file: str) -> Any:
            return io.StringIO(lexnames) if file == "lexnames" else super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:  # no multilingual (OMW) mapping needed
            return None

    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # NLTK only opens corpus files under its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DebianWordNet(str(root), None)


@lru_cache(maxsize=1)
def load_wordnet() -> tuple[Any, str]:
    """(WordNet reader, where it came from): ``nltk_data``, ``debian:/usr/share/wordnet`` or ``none``."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, "nltk_data"
    except LookupError:
        pass
    if (DEBIAN_WORDNET / "data.noun").is_file():
        try:
            return _debian_reader(DEBIAN_WORDNET), f"debian:{DEBIAN_WORDNET}"
        except (OSError, ValueError, AssertionError):
            pass
    return _NoWordNet(), "none"


class _Whitespace:
    """rouge-score tokenizer for text the kit already tokenised (its default drops Chinese characters)."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _bleu(pairs: Sequence[Pair], n: int) -> float:
    from sacrebleu.metrics import BLEU

    hyps = [" ".join(h) for h, _r in pairs]
    refs = [" ".join(r) for _h, r in pairs]
    return float(BLEU(tokenize="none", max_ngram_order=n).corpus_score(hyps, [refs]).score) / 100.0


def _rouge_l(pairs: Sequence[Pair]) -> float:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], tokenizer=_Whitespace())
    return sum(scorer.score(" ".join(r), " ".join(h))["rougeL"].fmeasure for h, r in pairs) / len(pairs)


def _meteor(pairs: Sequence[Pair], wordnet: Any) -> float:
    from nltk.translate.meteor_score import meteor_score

    return sum(meteor_score([r], h, wordnet=wordnet) if h and r else 0.0 for h, r in pairs) / len(pairs)


def text_scores(pairs: Sequence[Pair]) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and METEOR of (hypothesis tokens, reference tokens) pairs (empty: no metrics)."""
    pairs = [(list(h), list(r)) for h, r in pairs if r]
    if not pairs:
        return {}
    wordnet, source = load_wordnet()
    # rounded to 6 places: sacrebleu's percentages carry float noise (100.00000000000004 for identical text)
    out: dict[str, Any] = {f"BLEU-{n}": round(_bleu(pairs, n), 6) for n in (1, 2, 3, 4)}
    out["ROUGE-L"] = round(_rouge_l(pairs), 6)
    out["METEOR"] = round(_meteor(pairs, wordnet), 6)
    out["METEOR_wordnet"] = source
    out["text_samples"] = len(pairs)
    return out
