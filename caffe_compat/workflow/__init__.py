"""The legacy data workflow, one module per step (the ``caffe-compat workflow`` commands):

1. :func:`annotations.clean_annotations` (sheet, out_csv, :class:`annotations.CleanOptions`) -> CleanResult
2. :func:`download.download_videos` (clean_csv, out_dir, :class:`download.DownloadOptions`) -> DownloadResult
3. :func:`frames.extract_frames` (videos, out_dir, :class:`frames.FrameOptions`, annotations=clean_csv) -> FramesResult
4. :func:`distribution.plot_distribution` (csv_or_list, out_png) -> Distribution
5. :func:`balance.balance_split` (frames_manifest, out_dir, :class:`balance.BalanceOptions`) -> BalanceResult

Every result has ``.table()`` (the count table the CLI prints) and per-row ``messages``
where rows were dropped; bad input raises :class:`caffe_compat.errors.CaffeCompatError`.
"""
