"""The one place where concepts live: what each erasable or retained concept is called,
how a prompt names it, and which anchor prompt stands in for it when it is ablated.

Two domains:
- `world`: the Concept World's styles (rendered by `harness.world.render`);
- `art`: the artist styles of the paper (real scale: SD 2.1 with a concept data set).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError
from harness.world.render import STYLES


@dataclass(frozen=True)
class Concept:
    name: str
    phrase: str  # how a prompt names the concept, e.g. "in the style of stripes"
    anchor_prompt: str  # what concept ablation maps the concept onto (CA's anchor)

    def apply(self, prompt: str) -> str:
        """The prompt with this concept added."""
        return f"{prompt} {self.phrase}".strip()

    def ablate(self, prompt: str) -> str:
        """The anchor prompt for a concept prompt: the concept's phrase removed (world) or the
        generic anchor (art), as concept ablation's model-based variant does."""
        if self.phrase and self.phrase in prompt:
            stripped = prompt.replace(self.phrase, "").strip()
            return stripped or self.anchor_prompt
        return self.anchor_prompt


DOMAINS: dict[str, dict[str, Concept]] = {
    "world": {s: Concept(s, f"in the style of {s}", "a shape") for s in STYLES},
    "art": {
        "van_gogh": Concept("van_gogh", "by Vincent van Gogh", "a painting"),
        "monet": Concept("monet", "by Claude Monet", "a painting"),
        "picasso": Concept("picasso", "by Pablo Picasso", "a painting"),
    },
}


def get(domain: str, name: str, key: str = "concepts.erase") -> Concept:
    """Look a concept up, or fail naming the key, the value and the accepted names."""
    if domain not in DOMAINS:
        raise ConfigError("data.domain", domain, f"one of {', '.join(sorted(DOMAINS))}")
    table = DOMAINS[domain]
    if name not in table:
        raise ConfigError(key, name, f"a {domain} concept: {', '.join(table)}")
    return table[name]


def resolve_set(domain: str, erase, retain) -> tuple[list[Concept], list[Concept]]:
    """Validate a concept set: non-empty erase list, known names, no overlap with retain."""
    erase, retain = list(erase or []), list(retain or [])
    if not erase:
        raise ConfigError("concepts.erase", erase, "a non-empty list of concept names")
    erased = [get(domain, n, "concepts.erase") for n in erase]
    retained = [get(domain, n, "concepts.retain") for n in retain]
    overlap = sorted(set(erase) & set(retain))
    if overlap:
        raise ConfigError("concepts.retain", overlap, "names not also listed in concepts.erase")
    return erased, retained
