"""Every SOURCE layout is recognised by its shape and ingests into the canonical table.

URL sources are served by a real http.server on 127.0.0.1: no mocks, real sockets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from cd4ml.data.ingest import ingest
from cd4ml.data.sources import header, resolve_source
from cd4ml.data.spec import SpecError

Canonical = Callable[[Path], pd.DataFrame]

STORE47_HEADER = (
    "id,date,item_nbr,unit_sales,family,class,perishable,transactions,year,month,day,"
    "dayofweek,days_til_end_of_data,dayoff"
)


@dataclass
class Web:
    root: Path
    base_url: str
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    """Serve a fresh folder over HTTP; `requested` lists the paths fetched."""
    site = Web(tmp_path / "www", "")
    site.root.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(site.root), **kwargs)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            site.requested.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    site.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield site
    server.shutdown()
    server.server_close()
    thread.join()


def write_store47(path: Path, days: int = 10) -> Path:
    """The workshop's file: item 103520 (grocery) and 105574 (perishable), one row per day."""
    lines = [STORE47_HEADER]
    for day in range(1, days + 1):
        stamp = pd.Timestamp(2016, 8, day)
        weekend = stamp.weekday() >= 5
        for item, family, klass, perishable in [
            (103520, "GROCERY I", 1028, 0),
            (105574, "DAIRY", 2712, 1),
        ]:
            lines.append(
                f"{len(lines)},{stamp:%Y-%m-%d},{item},{day}.0,{family},{klass},{perishable},"
                f"1500,2016,8,{day},{stamp.weekday()},{days - day},{weekend}"
            )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_favorita_folder_reads_as_the_favorita_preset(favorita_sample: Path) -> None:
    spec = resolve_source(str(favorita_sample), favorita_sample / "cache")
    assert spec.name == "favorita"
    assert spec.series_keys == ["store_nbr", "item_nbr"]
    assert spec.resolve(spec.side_tables[0].path) == str(favorita_sample / "items.csv")


def test_a_store_sales_folder_ingests_with_promotion_counts(tmp_path: Path, read_canonical: Canonical) -> None:
    folder = tmp_path / "store-sales"
    folder.mkdir()
    rows = ["id,date,store_nbr,family,sales,onpromotion"]
    for day in range(1, 11):
        for store in (1, 2):
            for family in ("AUTOMOTIVE", '"LIQUOR,WINE,BEER"'):
                rows.append(f"{len(rows) - 1},2017-03-{day:02d},{store},{family},{day}.5,{day % 4}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    (folder / "stores.csv").write_text(
        "store_nbr,city,state,type,cluster\n1,Quito,Pichincha,D,13\n2,Guayaquil,Guayas,A,5\n"
    )
    (folder / "holidays_events.csv").write_text(
        "date,type,locale,locale_name,description,transferred\n"
        "2017-03-02,Holiday,National,Ecuador,Carnaval,False\n"
        "2017-03-05,Holiday,Local,Quito,Fundacion,False\n"
    )
    spec = resolve_source(str(folder), tmp_path / "cache")
    assert spec.name == "store-sales"

    ingest(spec, tmp_path / "out", tmp_path / "cache")

    sales = read_canonical(tmp_path / "out")
    assert len(sales) == 40
    assert set(sales["family"]) == {"AUTOMOTIVE", "LIQUOR,WINE,BEER"}
    assert set(sales["onpromotion"]) == {0.0, 1.0, 2.0, 3.0}  # a count, not a flag
    assert sales.loc[sales["store_nbr"] == 2, "city"].eq("Guayaquil").all()
    holidays = pd.read_parquet(tmp_path / "out" / "holidays.parquet")
    assert holidays["locale"].tolist() == ["", "Quito"]


def test_the_store47_file_ingests_with_its_attributes_and_weights(tmp_path: Path, read_canonical: Canonical) -> None:
    path = write_store47(tmp_path / "store47-2016.csv")
    spec = resolve_source(str(path), tmp_path / "cache")
    assert spec.name == "store47"

    report = ingest(spec, tmp_path / "out", tmp_path / "cache")

    sales = read_canonical(tmp_path / "out")
    assert len(sales) == 20
    weekend = pd.to_datetime(sales["date"]).dt.weekday >= 5
    assert sales["dayoff"].tolist() == weekend.astype(float).tolist()  # True/False read as 1/0
    assert sales.groupby("item_nbr")["weight"].first().to_dict() == {103520: 1.0, 105574: 1.25}
    assert "transactions" in report.dropped_columns  # known only after the day ends
    assert report.ignored_columns == []  # the preset names every column it drops


def test_the_store47_file_downloads_from_a_url(web: Web, tmp_path: Path, read_canonical: Canonical) -> None:
    write_store47(web.root / "store47-2016.csv")
    url = f"{web.base_url}/store47-2016.csv"

    spec = resolve_source(url, tmp_path / "cache")
    report = ingest(spec, tmp_path / "out", tmp_path / "cache")

    assert spec.sales == url  # the lineage names the URL, not the cached copy
    assert report.source == url
    assert "/store47-2016.csv" in web.requested
    assert len(read_canonical(tmp_path / "out")) == 20


def test_a_spec_from_a_url_reads_its_files_from_beside_it(web: Web, tmp_path: Path, read_canonical: Canonical) -> None:
    (web.root / "spec.yaml").write_text(
        "name: shop\nsales: sales.csv\nseries_keys: [store]\ntarget: units\n"
        "side_tables:\n  - path: stores.csv\n    on: [store]\n"
    )
    (web.root / "sales.csv").write_text("date,store,units\n2016-01-01,1,3\n2016-01-02,1,4\n")
    (web.root / "stores.csv").write_text("store,region\n1,north\n")

    spec = resolve_source(f"{web.base_url}/spec.yaml", tmp_path / "cache")
    ingest(spec, tmp_path / "out", tmp_path / "cache")

    assert {"/spec.yaml", "/sales.csv", "/stores.csv"} <= set(web.requested)
    assert read_canonical(tmp_path / "out")["region"].tolist() == ["north", "north"]


def test_a_header_with_a_byte_order_mark_is_recognised(tmp_path: Path) -> None:
    path = write_store47(tmp_path / "excel.csv")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert header(path)[0] == "id"
    assert resolve_source(str(path), tmp_path / "cache").name == "store47"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no train.csv"),
        ({"train.csv": "day,shop,units\n"}, "match neither the Favorita nor the Store Sales"),
    ],
)
def test_an_unknown_folder_asks_for_a_spec(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SpecError, match=message):
        resolve_source(str(tmp_path), tmp_path / "cache")


def test_an_unknown_csv_asks_for_a_spec(tmp_path: Path) -> None:
    (tmp_path / "sales.csv").write_text("day,shop,units\n2016-01-01,1,3\n")
    with pytest.raises(SpecError, match="dataset spec YAML"):
        resolve_source(str(tmp_path / "sales.csv"), tmp_path / "cache")


def test_a_missing_source_says_what_sources_are(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"not found.*'sample', a folder, a CSV, a URL or a spec"):
        resolve_source(str(tmp_path / "nowhere.csv"), tmp_path / "cache")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("frequency: monthly\n", "frequency"),
        ("holidays: {country: XX}\n", "unknown country code 'XX'"),
        ("holidays: {local_columns: [city]}\n", "exactly one of events_file and country"),
        ("covariates: [store]\n", "more than one role: store"),
    ],
)
def test_spec_errors_name_the_field(tmp_path: Path, extra: str, message: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: shop\nsales: sales.csv\nseries_keys: [store]\ntarget: units\n" + extra)
    with pytest.raises(SpecError, match=f"{spec}: invalid dataset spec: .*{message}"):
        resolve_source(str(spec), tmp_path / "cache")
