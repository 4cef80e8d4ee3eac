package bench

import (
	"fmt"
	"io"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WriteSVG draws two charts against the account count (log scale), one above the other:
// throughput (ops/s, with the raw commit ceiling as a dashed line when measured) and p99
// latency (ms), with one line per mode and group commit setting. It returns an error when
// the report has no runs or a chart cannot be drawn.
func (r Report) WriteSVG(w io.Writer) error {
	if len(r.Runs) == 0 {
		return fmt.Errorf("bench: svg: no runs to draw")
	}
	type series struct {
		name string
		runs []Result
	}
	var all []*series
	for _, x := range r.Runs {
		name := fmt.Sprintf("%s, group commit %s", x.Mode, onOff(x.GroupCommit))
		i := slices.IndexFunc(all, func(s *series) bool { return s.name == name })
		if i < 0 {
			all = append(all, &series{name: name})
			i = len(all) - 1
		}
		all[i].runs = append(all[i].runs, x)
	}
	points := func(runs []Result, y func(Result) float64) plotter.XYs {
		runs = slices.Clone(runs)
		slices.SortFunc(runs, func(a, b Result) int { return a.Accounts - b.Accounts })
		xys := make(plotter.XYs, len(runs))
		for i, x := range runs {
			xys[i] = plotter.XY{X: float64(x.Accounts), Y: y(x)}
		}
		return xys
	}
	newPlot := func(title, ylabel string) *plot.Plot {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "accounts"
		p.Y.Label.Text = ylabel
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Min = 0
		p.Legend.Top, p.Legend.Left = true, true
		p.Legend.XOffs = vg.Millimeter * 4
		p.Add(plotter.NewGrid())
		return p
	}
	tp := newPlot("Throughput", "ops/s")
	lat := newPlot("p99 latency", "ms")
	var tArgs, lArgs []any
	for _, s := range all {
		tArgs = append(tArgs, s.name, points(s.runs, func(x Result) float64 { return x.OpsPerSec }))
		lArgs = append(lArgs, s.name, points(s.runs, func(x Result) float64 { return x.P99Ms }))
	}
	if err := plotutil.AddLinePoints(tp, tArgs...); err != nil {
		return fmt.Errorf("bench: svg: %w", err)
	}
	if err := plotutil.AddLinePoints(lat, lArgs...); err != nil {
		return fmt.Errorf("bench: svg: %w", err)
	}
	if r.CeilingOpsPerSec != nil {
		lo, hi := float64(r.Runs[0].Accounts), float64(r.Runs[0].Accounts)
		for _, x := range r.Runs {
			lo, hi = min(lo, float64(x.Accounts)), max(hi, float64(x.Accounts))
		}
		c, err := plotter.NewLine(plotter.XYs{{X: lo, Y: *r.CeilingOpsPerSec}, {X: hi, Y: *r.CeilingOpsPerSec}})
		if err != nil {
			return fmt.Errorf("bench: svg: %w", err)
		}
		c.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		tp.Add(c)
		tp.Legend.Add("raw commit ceiling", c)
	}
	// Room above the lines for the legend.
	var maxT, maxL float64
	for _, x := range r.Runs {
		maxT, maxL = max(maxT, x.OpsPerSec), max(maxL, x.P99Ms)
	}
	if r.CeilingOpsPerSec != nil {
		maxT = max(maxT, *r.CeilingOpsPerSec)
	}
	tp.Y.Max, lat.Y.Max = max(maxT, 1)*1.45, max(maxL, 0.001)*1.45
	const width, height = 8 * vg.Inch, 9 * vg.Inch
	img := vgsvg.New(width, height)
	dc := draw.New(img)
	plots := [][]*plot.Plot{{tp}, {lat}}
	canvases := plot.Align(plots, draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Millimeter * 6, PadTop: vg.Millimeter * 2,
		PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}, dc)
	tp.Draw(canvases[0][0])
	lat.Draw(canvases[1][0])
	if _, err := img.WriteTo(w); err != nil {
		return fmt.Errorf("bench: svg: %w", err)
	}
	return nil
}
