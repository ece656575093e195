"""A source outside the project's packages: numbers and their squares, ``count`` of them per dataset.

The smallest working source: a config section, a Python stream reader Spark runs in its reader
process, and a plan that hands the batch's rows to the row stage. Registered by the
``entry_points.txt`` beside it, as a separately installed distribution would be.
"""

from __future__ import annotations

from pydantic import Field
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from connectors.staging import stage_dataframe
from streaming.config import LoadOptions
from streaming.sources import Batch, Dataset, Source, fingerprint


class NumbersConfig(LoadOptions):
    name: str
    count: int = Field(10, ge=1)


class NumbersSource(Source):
    kind = "numbers"
    checkpoint_folder = "numbers"
    section = "numbers"
    section_model = list[NumbersConfig]

    @classmethod
    def declared_tables(cls, settings) -> list[str]:
        return [n.name for n in settings.section("numbers")]

    def start(self, spark) -> None:  # driver
        spark.dataSource.register(NumbersDataSource)

    def datasets(self) -> list[Dataset]:  # driver
        return [Dataset(n.name, n.name, n, fingerprint(n)) for n in self.context.settings.section("numbers")]

    def stream(self, spark, dataset: Dataset):  # driver
        return spark.readStream.format("dataops_numbers").option("count", str(dataset.config.count)).load()

    def plan(self, dataset: Dataset, df, batch_id: int) -> Batch:  # driver; stage tasks run on executors
        return Batch(source=f"numbers:{dataset.name}", options={"null_tokens": [""], "true_tokens": ["true"],
                                                                 "false_tokens": ["false"]},
                     stage=lambda template, token: stage_dataframe(df, template, token))


class _Range(InputPartition):
    def __init__(self, start: int, end: int):
        super().__init__(None)
        self.start, self.end = start, end


class NumbersDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return "dataops_numbers"

    def schema(self) -> str:
        return "n string, square string"

    def streamReader(self, schema):
        return _NumbersReader(int(self.options["count"]))


class _NumbersReader(DataSourceStreamReader):  # reader process; read() on executors
    def __init__(self, count: int):
        self.count = count

    def initialOffset(self) -> dict:
        return {"n": 0}

    def latestOffset(self, start: dict, limit=None) -> dict:
        return {"n": self.count}

    def partitions(self, start: dict, end: dict):
        a, b = start["n"], end["n"]
        middle = (a + b) // 2
        return [p for p in (_Range(a, middle), _Range(middle, b)) if p.end > p.start]

    def read(self, partition: _Range):
        for i in range(partition.start, partition.end):
            yield str(i + 1), str((i + 1) ** 2)
