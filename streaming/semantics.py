"""What a column's values mean: semantic types, personal-data categories and masking.

Pure functions and data, no I/O. Each semantic type is one test a value can pass: a regular
expression written in the subset PostgreSQL (``~``) and Python (``re.fullmatch``) read alike, a
code list, or a numeric range. The merge counts, per column, how many of a batch's values pass each test
(:func:`connectors.profile.apply`); :func:`classify` then picks the type from those exact counts
and the column's name, and :func:`pii_category` tells whether the column holds personal data.
"""

from __future__ import annotations

import dataclasses
import re
import zoneinfo

__all__ = ["SemanticType", "TYPES", "THRESHOLD", "applicable", "fits", "tokens", "classify", "pii_category", "mask"]

THRESHOLD = 0.9  # share of non-null values that must fit before a column gets a semantic type
PII_SHARE = 0.3  # share of values that look like personal data before a column counts as holding it

COUNTRY_ALPHA2 = frozenset("""
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
    BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
    EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
    HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
    LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
    NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
    TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
""".split())
COUNTRY_ALPHA3 = frozenset("""
    ABW AFG AGO AIA ALA ALB AND ARE ARG ARM ASM ATA ATF ATG AUS AUT AZE BDI BEL BEN BES BFA BGD BGR
    BHR BHS BIH BLM BLR BLZ BMU BOL BRA BRB BRN BTN BVT BWA CAF CAN CCK CHE CHL CHN CIV CMR COD COG
    COK COL COM CPV CRI CUB CUW CXR CYM CYP CZE DEU DJI DMA DNK DOM DZA ECU EGY ERI ESH ESP EST ETH
    FIN FJI FLK FRA FRO FSM GAB GBR GEO GGY GHA GIB GIN GLP GMB GNB GNQ GRC GRD GRL GTM GUF GUM GUY
    HKG HMD HND HRV HTI HUN IDN IMN IND IOT IRL IRN IRQ ISL ISR ITA JAM JEY JOR JPN KAZ KEN KGZ KHM
    KIR KNA KOR KWT LAO LBN LBR LBY LCA LIE LKA LSO LTU LUX LVA MAC MAF MAR MCO MDA MDG MDV MEX MHL
    MKD MLI MLT MMR MNE MNG MNP MOZ MRT MSR MTQ MUS MWI MYS MYT NAM NCL NER NFK NGA NIC NIU NLD NOR
    NPL NRU NZL OMN PAK PAN PCN PER PHL PLW PNG POL PRI PRK PRT PRY PSE PYF QAT REU ROU RUS RWA SAU
    SDN SEN SGP SGS SHN SJM SLB SLE SLV SMR SOM SPM SRB SSD STP SUR SVK SVN SWE SWZ SXM SYC SYR TCA
    TCD TGO THA TJK TKL TKM TLS TON TTO TUN TUR TUV TWN TZA UGA UKR UMI URY USA UZB VAT VCT VEN VGB
    VIR VNM VUT WLF WSM YEM ZAF ZMB ZWE
""".split())
CURRENCY_CODES = frozenset("""
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
    CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP
    GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD
    SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
    USD USN UYI UYU UYW UZS VED VES VND VUV WST XAD XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD
    XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG
""".split())


# IANA zone names as the machine's tz database knows them (the tzdata package stands in where the
# operating system has none); the links PostgreSQL and Python keep for compatibility stay out.
TIMEZONES = frozenset(z for z in zoneinfo.available_timezones() if z not in ("localtime", "Factory", "posixrules"))

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HEX4 = r"[0-9A-Fa-f]{1,4}"


@dataclasses.dataclass(frozen=True)
class SemanticType:
    """One meaning a column can have, and how a single value is tested for it.

    Attributes:
        name: the catalog's ``semantic_type`` value.
        pattern: regular expression a whole text value must match (PostgreSQL ``~`` and Python alike).
        codes: the values a text value must be one of (PostgreSQL looks a constant list up by hash).
        length: inclusive bounds of a text value's length, and ``starts`` the characters it may start
            with: cheap tests that spare most values the regular expression.
        numeric: inclusive range a number must fall in (numeric columns).
        integral: the range applies to integer columns only.
        hints: name tokens that point to this type and break ties between types that fit.
        needs_hint: values alone are too ambiguous (a number between -90 and 90): a hint is required.
        pii: the personal-data category of a column of this type.
    """

    name: str
    pattern: str | None = None
    codes: frozenset[str] | None = None
    length: tuple[int, int] | None = None
    starts: str | None = None
    numeric: tuple[float, float] | None = None
    integral: bool = False
    hints: tuple[str, ...] = ()
    needs_hint: bool = False
    pii: str | None = None

    @property
    def regex(self) -> re.Pattern | None:
        return _compiled(self.pattern) if self.pattern else None


_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    if pattern not in _CACHE:
        # PostgreSQL's "." matches line breaks too; DOTALL makes Python agree.
        _CACHE[pattern] = re.compile(pattern, re.DOTALL)
    return _CACHE[pattern]


TYPES: tuple[SemanticType, ...] = (
    SemanticType("email", r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", length=(6, 320),
                 hints=("email", "mail"), pii="email"),
    SemanticType("url", r"(?:[Hh][Tt][Tt][Pp][Ss]?|[Ff][Tt][Pp])://[A-Za-z0-9.-]+(?::[0-9]+)?(?:[/?#][^ ]*)?",
                 length=(8, 8192), starts="hHfF", hints=("url", "uri", "link", "website", "homepage", "href")),
    SemanticType("uuid", r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
                 length=(36, 36), hints=("uuid", "guid")),
    SemanticType("ipv4", rf"(?:{_OCTET}\.){{3}}{_OCTET}", length=(7, 15), starts="0123456789", hints=("ip", "ipv4", "addr"), pii="ip_address"),
    SemanticType("ipv6", rf"(?:{_HEX4}:){{7}}{_HEX4}|(?:(?:{_HEX4}:){{0,6}}{_HEX4})?::(?:(?:{_HEX4}:){{0,6}}{_HEX4})?",
                 length=(2, 39), starts="0123456789abcdefABCDEF:", hints=("ip", "ipv6", "addr"), pii="ip_address"),
    SemanticType("phone", r"\+?\(?[0-9]{1,4}\)?(?:[ .-]?\(?[0-9]{2,4}\)?){2,5}", length=(7, 22),
                 starts="+(0123456789", hints=("phone", "tel", "telephone", "mobile", "cell", "fax", "msisdn"), pii="phone"),
    SemanticType("country_code", codes=COUNTRY_ALPHA2 | COUNTRY_ALPHA3,
                 hints=("country", "nation", "iso", "cc")),
    SemanticType("currency_code", codes=CURRENCY_CODES, hints=("currency", "ccy", "cur")),
    SemanticType("postal_code", r"[0-9]{5}(?:-[0-9]{4})?|[0-9]{3,4}|[0-9]{3}-[0-9]{4}|[0-9]{2}-[0-9]{3}|[0-9]{6}"
                                r"|[A-Z][0-9][A-Z] ?[0-9][A-Z][0-9]|[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}",
                 length=(3, 10), numeric=(100, 999999), integral=True, hints=("zip", "zipcode", "postal", "postcode", "plz"),
                 needs_hint=True),
    SemanticType("latitude", numeric=(-90, 90), hints=("lat", "latitude"), needs_hint=True),
    SemanticType("longitude", numeric=(-180, 180), hints=("lon", "lng", "long", "longitude"), needs_hint=True),
    SemanticType("timezone", codes=TIMEZONES, hints=("tz", "timezone", "zone")),
    SemanticType("json", r"(?:\{.*\}|\[.*\])", length=(2, 1 << 30), starts="{[", hints=("json", "payload", "data")),
)
_BY_NAME = {t.name: t for t in TYPES}
_INTEGERS = ("smallint", "integer", "bigint")
_NUMBERS = (*_INTEGERS, "numeric", "real", "double precision")


def applicable(kind: str) -> list[SemanticType]:
    """The types a column of PostgreSQL type ``kind`` is tested for, in order."""
    if kind == "text":
        return [t for t in TYPES if t.pattern or t.codes]
    if kind in _NUMBERS:
        return [t for t in TYPES if t.numeric and (kind in _INTEGERS or not t.integral)]
    return []


def fits(semantic_type: str, value) -> bool:
    """Whether one value passes a type's test (the Python twin of the SQL the merge counts with)."""
    t = _BY_NAME[semantic_type]
    if isinstance(value, str):
        if t.codes is not None:
            return value in t.codes
        if t.length and not t.length[0] <= len(value) <= t.length[1] or t.starts and value[:1] not in t.starts:
            return False
        return bool(t.regex and t.regex.fullmatch(value))
    if t.numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
        return t.numeric[0] <= value <= t.numeric[1] and (not t.integral or isinstance(value, int))
    return False


def tokens(column: str) -> set[str]:
    """A normalized column name's words, and the name itself (``billing_zip`` → billing, zip, billing_zip)."""
    return {column, *column.split("_")} - {""}


def classify(column: str, kind: str, counts: dict[str, int] | None, non_null: int) -> tuple[str | None, float | None]:
    """The column's semantic type and the share of its non-null values that fit it.

    A type is chosen only when at least :data:`THRESHOLD` of the values fit it (and, for types whose
    values are ambiguous alone, the name hints at it); among several that fit, a hinting name wins,
    then the larger share, then the order of :data:`TYPES`.
    """
    if kind == "jsonb":
        return ("json", 1.0) if non_null else (None, None)
    if not non_null or not counts:
        return None, None
    words = tokens(column)
    best, best_rank = None, None
    for order, t in enumerate(applicable(kind)):
        share = counts.get(t.name, 0) / non_null
        hinted = bool(words & set(t.hints))
        if share < THRESHOLD or (t.needs_hint and not hinted):
            continue
        rank = (hinted, share, -order)
        if best_rank is None or rank > best_rank:
            best, best_rank = (t.name, round(min(share, 1.0), 4)), rank
    return best or (None, None)


_PII_NAMES = {
    "person_name": {"first_name", "last_name", "full_name", "given_name", "family_name", "surname", "middle_name",
                    "firstname", "lastname", "fullname", "maiden_name", "person_name", "customer_name",
                    "contact_name", "employee_name", "patient_name"},
    "date_of_birth": {"dob", "birth_date", "date_of_birth", "birthdate", "birthday", "born_on"},
    "national_id": {"ssn", "social_security_number", "national_id", "passport", "passport_number", "tax_id",
                    "nin", "driver_license", "drivers_license"},
    "payment_card": {"card_number", "credit_card", "credit_card_number", "cc_number", "pan"},
    "bank_account": {"iban", "account_number", "bank_account"},
    "credential": {"password", "passwd", "secret", "api_key", "token"},
}
_PII_WORDS = (("email", {"email", "mail"}), ("phone", {"phone", "mobile", "telephone", "tel", "fax"}),
              ("ip_address", {"ip", "ipv4", "ipv6"}), ("address", {"address", "street", "addr"}))


def pii_category(column: str, semantic_type: str | None, counts: dict[str, int] | None, non_null: int) -> str | None:
    """The kind of personal data a column holds (``email``, ``phone``, ``ip_address``, ``person_name``, …), or None.

    From the semantic type first, then the name, then the values: a column where a good share of
    the values are e-mail or IP addresses holds personal data even when it is not of that type.
    """
    if semantic_type and _BY_NAME[semantic_type].pii:
        return _BY_NAME[semantic_type].pii
    words = tokens(column)
    for category, names in _PII_NAMES.items():
        if column in names or any(n in words for n in names if "_" not in n and len(n) > 3):
            return category
    for category, names in _PII_WORDS:
        if words & names:
            return category
    if counts and non_null:
        for t in TYPES:
            if t.pii and counts.get(t.name, 0) >= PII_SHARE * non_null:
                return t.pii
    return None


def mask(value: str, category: str | None) -> str:
    """A value as it may be shown: unchanged without a category, else with the identifying part hidden.

    ``jane@example.com`` → ``j***@example.com``; phones keep their last two digits; IPv4 addresses
    their first two octets, IPv6 their first two groups; anything else its first character.
    """
    if category is None:
        return value
    if category == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if category == "phone":
        digits = sum(c.isdigit() for c in value)
        seen, out = 0, []
        for c in value:
            if c.isdigit():
                seen += 1
                out.append(c if seen > digits - 2 else "*")
            else:
                out.append(c)
        return "".join(out)
    if category == "ip_address":
        if fits("ipv4", value):
            return ".".join(value.split(".")[:2] + ["*", "*"])
        if ":" in value:
            return ":".join(value.split(":")[:2]) + ":*"
    return f"{value[:1]}***"
