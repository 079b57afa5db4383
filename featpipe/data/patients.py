"""Patient ids from file names, so that one patient's images never straddle train and test.

Rules are tried in order on the relative path of an image; the first that matches names the patient.
A user regex (``data.patient_regex``) comes first; an image no rule matches is its own patient.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from featpipe.core.errors import ConfigError

# (name, pattern on the file stem). The first group is the patient id.
STEM_RULES: tuple[tuple[str, re.Pattern], ...] = (
    # Kaggle chest_xray: person1000_bacteria_2931 / person1000_virus_1681 -> person1000
    ("kaggle-person", re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$", re.IGNORECASE)),
    # Kaggle chest_xray: IM-0115-0001 -> IM-0115; NORMAL2-IM-0666-0001 -> NORMAL2-IM-0666
    ("kaggle-im", re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+$", re.IGNORECASE)),
    # Figure 1 COVID-19 CXR: COVID-00003a / COVID-00003b -> COVID-00003
    ("figure1", re.compile(r"^(COVID-\d+)[a-z]?$")),
    # featpipe's synthetic set: synth-p0012-1 -> synth-p0012
    ("synthetic", re.compile(r"^(synth-p\d+)-\d+$")),
)

# (name, pattern on the path's folders): CheXpert train/patient00001/study1/view1_frontal.jpg
PATH_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("chexpert", re.compile(r"^(patient\d+)$")),
)


class PatientRules:
    """Callable ``rel_path -> patient id``; ``user_regex`` is searched in the relative path first."""

    def __init__(self, user_regex: str | None = None):
        self.user = None
        if user_regex:
            try:
                self.user = re.compile(user_regex)
            except re.error as exc:
                raise ConfigError(f"bad value for 'data.patient_regex': {user_regex!r} ({exc})") from None

    def __call__(self, rel_path: str) -> str:
        p = PurePosixPath(rel_path)
        if self.user is not None:
            m = self.user.search(rel_path)
            if m:
                return m.group(1) if m.groups() and m.group(1) else m.group(0)
        for _, rule in STEM_RULES:
            m = rule.match(p.stem)
            if m:
                return m.group(1)
        for part in p.parts[:-1]:
            for _, rule in PATH_RULES:
                m = rule.match(part)
                if m:
                    return m.group(1)
        return rel_path


def patient_of(rel_path: str, user_regex: str | None = None) -> str:
    return PatientRules(user_regex)(rel_path)
