"""An evaluator that shares nothing with the reward: "which persona wrote this line?".

A multinomial logistic regression over the personas, trained ONLY on held-out
gold lines (persona turns of conversations no adapter trained on) and the spec
example lines; it never sees a line any method generated, and it does not use
the reward's similarity-to-the-spec score. Two feature sets make two evaluators:

- ``ngram``: TF-IDF of character 2–4-grams (no neural encoder at all);
- ``minilm``: the shared MiniLM sentence embedding (same encoder as the voice
  judge, but a classifier trained on different data with a different decision).

A line's score is the probability the classifier gives its true persona; the
leaderboard also reports top-1 accuracy (predicted persona == true persona),
whose chance level is 1 / number of personas. ``cv_accuracy`` says whether the
classifier can tell the personas apart at all on its own training lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import JudgeItem, Score

FEATURES = ("ngram", "minilm")


class PersonaIdClassifier:
    """Protocol judge: P(true persona | line) from a classifier trained on held-out gold + spec lines."""

    def __init__(self, lines: Mapping[str, Sequence[str]], features: str = "ngram", seed: int = 0):
        if features not in FEATURES:
            raise ValueError(f"persona-id features {features!r}: use one of {FEATURES}")
        usable = {pid: [x for x in ls if x.strip()] for pid, ls in lines.items()}
        thin = sorted(pid for pid, ls in usable.items() if len(ls) < 2)
        if len(usable) < 2 or thin:
            raise ValueError(
                f"persona-id classifier needs ≥ 2 personas with ≥ 2 lines each; too few lines for {thin or 'all'}"
            )
        self.features, self.seed = features, seed
        self.name, self.signal = f"persona_id_{features}", f"persona_id_classifier:{features}"
        self.personas = sorted(usable)
        texts = [x for pid in self.personas for x in usable[pid]]
        labels = [pid for pid in self.personas for _ in usable[pid]]
        self.train_counts = {pid: len(usable[pid]) for pid in self.personas}
        # MiniLM features do not depend on the fold: embed every training line once
        embedded = self._vectorise(None, texts) if features == "minilm" else None
        self.cv_accuracy = self._cross_validate(texts, labels, embedded)
        self._vectoriser, self._model = self._fit(texts, labels, embedded)

    def _vectorise(self, vectoriser, texts: list[str]):
        if self.features == "minilm":
            from .embedding import encode

            return encode(texts).cpu().numpy()
        return vectoriser.transform(texts)

    def _fit(self, texts: list[str], labels: list[str], embedded=None):
        """(vectoriser, model); ``embedded``: the lines' MiniLM features, already computed."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vectoriser = None
        if self.features == "ngram":
            vectoriser = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, lowercase=True)
            vectoriser.fit(texts)
        model = LogisticRegression(max_iter=2000, C=4.0, random_state=self.seed)
        model.fit(embedded if embedded is not None else self._vectorise(vectoriser, texts), labels)
        return vectoriser, model

    def _cross_validate(self, texts: list[str], labels: list[str], embedded=None) -> float | None:
        """Stratified k-fold accuracy on the training lines (k ≤ 5; None when a persona has < 3 lines)."""
        from sklearn.model_selection import StratifiedKFold

        k = min(5, min(labels.count(p) for p in set(labels)))
        if k < 3:
            return None
        hits = []
        for train, test in StratifiedKFold(k, shuffle=True, random_state=self.seed).split(texts, labels):
            fold = embedded[train] if embedded is not None else None
            vectoriser, model = self._fit([texts[i] for i in train], [labels[i] for i in train], fold)
            x = embedded[test] if embedded is not None else self._vectorise(vectoriser, [texts[i] for i in test])
            pred = model.predict(x)
            hits += [p == labels[i] for p, i in zip(pred, test)]
        return float(np.mean(hits))

    @property
    def chance(self) -> float:
        return 1.0 / len(self.personas)

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        items = list(items)
        if not items:
            return []
        probs = self._model.predict_proba(self._vectorise(self._vectoriser, [i.response for i in items]))
        classes = list(self._model.classes_)
        out = []
        for item, p in zip(items, probs):
            if item.persona_id not in classes:
                out.append(Score(None, error=f"persona {item.persona_id!r} is not one the classifier knows"))
                continue
            predicted = classes[int(np.argmax(p))]
            out.append(
                Score(
                    round(float(p[classes.index(item.persona_id)]), 6),
                    details={"predicted": predicted, "top1": predicted == item.persona_id},
                )
            )
        return out
