"""Style presets: the prompts of the NeRF-Art paper and of the comparisons made against it.

Each preset is a starting point the user can edit after applying it. The source text is "photo" in every
released NeRF-Art config; strength 0..1 maps to the backend's iteration schedule unless iterations are set.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StylePreset:
    """One preset: an upper-case enum ID, a menu label, and the values it fills in."""

    id: str
    label: str
    prompt: str
    source_text: str = "photo"
    negative_prompts: str = ""
    strength: float = 0.5
    colour_only: bool = False
    shape_freedom: float = 0.0  # in head radii; every paper style keeps the head's shape
    description: str = ""


PRESETS: tuple[StylePreset, ...] = (
    StylePreset("VAN_GOGH", "Van Gogh", "painting, oil on canvas, Vincent van gogh self-portrait style",
                description="The prompt of NeRF-Art's released configuration"),
    StylePreset("PIXAR", "Pixar 3D character", "Pixar 3D character",
                description="A Pixar-style 3D cartoon character"),
    StylePreset("DISNEY", "Disney character", "Disney 3D character",
                description="A Disney-style animated character"),
    StylePreset("BOTERO", "Botero", "painting by Fernando Botero",
                description="Fernando Botero's voluminous painted figures"),
    StylePreset("MONA_LISA", "Mona Lisa", "Mona Lisa by Leonardo da Vinci",
                description="Leonardo da Vinci's Renaissance portrait"),
    StylePreset("ZOMBIE", "Zombie", "a zombie", strength=0.7, description="A decaying zombie face"),
    StylePreset("MARBLE", "Marble statue", "a marble statue", description="A white marble sculpture"),
    StylePreset("SKETCH", "Sketch", "a pencil sketch", colour_only=True,
                description="A pencil sketch; colour only keeps the geometry untouched"),
    StylePreset("TOLKIEN_ELF", "Tolkien Elf", "Tolkien Elf", description="An elf from Tolkien's legendarium"),
    StylePreset("FAUVISM", "Fauvism", "Fauvism", description="Bold, non-naturalistic Fauvist colour"),
    StylePreset("VOLDEMORT", "Lord Voldemort", "Lord Voldemort", strength=0.7,
                description="The Harry Potter villain (strong geometry change)"),
)

PRESETS_BY_ID = {p.id: p for p in PRESETS}


def preset_enum_items() -> list[tuple[str, str, str]]:
    """``(ID, label, description)`` triples for a Blender EnumProperty."""
    return [(p.id, p.label, f"{p.description}: \u201c{p.prompt}\u201d") for p in PRESETS]


def split_negative_prompts(text: str) -> list[str]:
    """The UI's negative prompt field (one per line or separated by ';') as a list of stripped strings."""
    parts = [s.strip() for chunk in text.splitlines() for s in chunk.split(";")]
    return [p for p in parts if p]
