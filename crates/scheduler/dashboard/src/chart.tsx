import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

export interface Series {
  label: string;
  x: number[];
  y: number[];
}

/// One chart of several series over a shared x axis (steps): series are aligned on the union of their x values,
/// with gaps where a series has no point.
export function LineChart({
  title,
  series,
  width = 520,
  height = 240,
  xLabel = "step",
}: {
  title: string;
  series: Series[];
  width?: number;
  height?: number;
  xLabel?: string;
}) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    if (!el.current) return;
    const xs = Array.from(new Set(series.flatMap((s) => s.x))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = series.map((s) => {
      const col: (number | null)[] = new Array(xs.length).fill(null);
      s.x.forEach((x, i) => (col[index.get(x)!] = s.y[i]));
      return col;
    });
    const data = [xs, ...ys] as uPlot.AlignedData;
    const opts: uPlot.Options = {
      title,
      width,
      height,
      scales: { x: { time: false } },
      series: [{ label: xLabel }, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], spanGaps: true, width: 1.5 }))],
      axes: [{ label: xLabel }, { size: 64 }],
    };
    if (plot.current && plot.current.series.length === series.length + 1) {
      plot.current.setData(data);
    } else {
      plot.current?.destroy();
      plot.current = new uPlot(opts, data, el.current);
    }
  }, [title, series, width, height, xLabel]);
  useEffect(() => () => plot.current?.destroy(), []);
  return <div className="chart" data-chart={title} ref={el} />;
}
