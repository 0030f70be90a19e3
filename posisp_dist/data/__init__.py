"""Offline raw data: built-in scenes, unprocessing, Parquet shards and readers for DNG / COCO files."""

from posisp_dist.data.shards import RawBatch, RawDataset

__all__ = ["RawBatch", "RawDataset"]
