"""Study reports: pure sections from results frames (`sections`), written as HTML and Markdown (`render`)."""
from opswap.report.render import write_report
from opswap.report.sections import Block, ReportContext

__all__ = ["write_report", "ReportContext", "Block"]
