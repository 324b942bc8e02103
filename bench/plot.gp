# The benchmark's plot, drawn by bench/run:
#   gnuplot -e "dir='target/bench'; sizes='100 1000'; out='bench/results/latest.png'" bench/plot.gp
# Left: share of the fleet ready over time, direct apply against the
# operator. Right: distribution of spec change -> Deployment updated.
# The change panel shows at least up to the 1 s target, and every sample
# (computed first: stats filters by the ranges set below).
xmax = 2000
do for [i=1:words(sizes)] {
  stats dir.'/change-'.word(sizes,i).'.tsv' u 1 nooutput
  if (STATS_max * 1.5 > xmax) { xmax = STATS_max * 1.5 }
}

set terminal pngcairo size 1400,560 font "sans,10"
set output out
set multiplot layout 1,2
set grid
set key bottom right

set key top left
set title "Fleet ready since the first apply (N sites of 3 replicas)"
set xlabel "seconds since the first apply (log)"
set ylabel "share of the fleet ready"
set logscale x
set yrange [0:1.02]
plot for [i=1:words(sizes)] dir.'/ready-'.word(sizes,i).'-direct.tsv' u ($1>0?$1:NaN):2 w l lw 2 dt 2 lc i \
       title 'N='.word(sizes,i).' direct: Deployments ready', \
     for [i=1:words(sizes)] dir.'/ready-'.word(sizes,i).'-operator-deployments.tsv' u ($1>0?$1:NaN):2 w l lw 1 dt 3 lc i \
       title 'N='.word(sizes,i).' operator: Deployments ready', \
     for [i=1:words(sizes)] dir.'/ready-'.word(sizes,i).'-operator.tsv' u ($1>0?$1:NaN):2 w l lw 2 dt 1 lc i \
       title 'N='.word(sizes,i).' operator: WebClusters Ready'

set xrange [0.5:xmax]
set key bottom right
set title "Spec change (image) -> Deployment carries it"
set xlabel "milliseconds from the patch response (log)"
set ylabel "share of the changed sites"
set logscale x
set arrow 1 from 1000, graph 0 to 1000, graph 1 nohead dt 2 lc rgb "red"
set label 1 "p99 target 1 s" at 1000, graph 0.5 right offset -0.5,0 tc rgb "red"
plot for [i=1:words(sizes)] dir.'/change-'.word(sizes,i).'.tsv' u ($1>0?$1:0.1):2 w steps lw 2 lc i \
       title 'N='.word(sizes,i)
unset multiplot
