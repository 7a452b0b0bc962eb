"""Which services callers expect from each kind of business: a table, not code paths.

A missing expected service is a warning, never an error: the agent will tell such callers
"we don't offer that", which may be right. Add an industry by adding a row.
"""

from __future__ import annotations

from workers.provisioning.findings import Finding, warning

# Keys are Company.industry values (spaces and hyphens read as underscores); each entry
# is (the service as an operator would name it, words that count as a match, lower-case,
# in English and German).
INDUSTRY_EXPECTED_SERVICES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "hair_salon": (
        ("haircut", ("haircut", "cut", "schnitt")),
        ("hair colouring", ("colour", "color", "färben", "farbe", "tönung")),
        ("blow-dry", ("blow", "föhn", "styling")),
    ),
    "medical_practice": (
        ("consultation", ("consultation", "sprechstunde", "untersuchung", "beratung")),
        ("check-up", ("check-up", "checkup", "vorsorge")),
        ("vaccination", ("vaccination", "impfung")),
    ),
    "physiotherapy": (
        ("physiotherapy session", ("physio", "krankengymnastik")),
        ("manual therapy", ("manual", "manuelle")),
        ("massage", ("massage",)),
    ),
    "legal": (("initial consultation", ("consultation", "erstberatung", "beratung")),),
    "restaurant": (("table reservation", ("reservation", "table", "tisch", "reservierung")),),
}
INDUSTRY_LABELS = {
    "hair_salon": "Hair salons",
    "medical_practice": "Medical practices",
    "physiotherapy": "Physiotherapy practices",
    "legal": "Law firms",
    "restaurant": "Restaurants",
}


def check_industry(company: str, industry_name: str | None, services: list[str]) -> list[Finding]:
    """Warnings for commonly expected services that none of ``services`` matches."""
    industry = (industry_name or "").strip().lower().replace(" ", "_").replace("-", "_")
    if not industry:
        return [
            warning(
                "COMPANY_INDUSTRY_MISSING",
                f"Company '{company}' has no industry, so no service "
                "recommendations can be checked",
                f"Set the industry to one of: {', '.join(INDUSTRY_EXPECTED_SERVICES)}",
            )
        ]
    expected = INDUSTRY_EXPECTED_SERVICES.get(industry)
    if expected is None:
        return [
            warning(
                "COMPANY_INDUSTRY_UNKNOWN",
                f"Industry '{industry_name}' has no service recommendations",
                f"Use one of: {', '.join(INDUSTRY_EXPECTED_SERVICES)} — or ignore this",
            )
        ]
    names = [s.lower() for s in services]
    return [
        warning(
            "INDUSTRY_SERVICE_MISSING",
            f"{INDUSTRY_LABELS[industry]} usually offer '{label}', but no active service "
            f"matches (looked for: {', '.join(words)})",
            f"Add a '{label}' service with its duration, or ignore this if the branch "
            "does not offer it",
        )
        for label, words in expected
        if not any(word in name for name in names for word in words)
    ]
