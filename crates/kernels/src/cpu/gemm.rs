//! A bounds-checked front to the `gemm` crate (the same crate, version and kernels burn's flex backend uses).
//!
//! Matrices are views over a slice with explicit row and column strides, so a transposed operand is a view, not
//! a copy. Invariant checked here (and what makes the one `unsafe` call sound): every element a view can address,
//! `(rows-1)*rs + (cols-1)*cs`, lies inside its slice, strides are non-negative, and `dst` is a dense row-major
//! block that no operand overlaps (it is a `&mut`, so the borrow checker already guarantees that).

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> View<'a> {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm: {what} view {}x{} exceeds its {} elements",
                self.rows,
                self.cols,
                self.data.len()
            );
        }
    }
}

/// `dst = a * b` (or `dst += a * b` when `accumulate`), `dst` dense row-major `a.rows x b.cols`.
///
/// `threads`: run gemm's own rayon parallelism (for calls made outside a parallel loop); `false` inside one.
pub(crate) fn gemm(dst: &mut [f32], accumulate: bool, a: View<'_>, b: View<'_>, threads: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ ({} vs {})", k, b.rows);
    assert_eq!(dst.len(), m * n, "gemm: destination holds {} elements, not {m}x{n}", dst.len());
    a.check("lhs");
    b.check("rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let par = if threads { gemm_crate::Parallelism::Rayon(0) } else { gemm_crate::Parallelism::None };
    // SAFETY: the views were checked to stay inside their slices, dst is exactly m*n elements written with row
    // stride n, and dst (a unique borrow) cannot alias the shared operand slices. alpha=1 (scales dst, read only
    // when accumulating), beta=1 (scales a*b).
    unsafe {
        gemm_crate::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] =
                    (0..a.cols).map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs]).sum();
            }
        }
        out
    }

    #[test]
    fn transposed_views_and_accumulation_match_a_naive_product() {
        let a: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect(); // 3x5
        let b: Vec<f32> = (0..20).map(|i| (i % 7) as f32 - 2.0).collect(); // 5x4, also read as (4x5)^T
        let (av, bv) = (View::rows(&a, 3, 5), View::rows(&b, 5, 4));
        let mut d = vec![0.0; 12];
        gemm(&mut d, false, av, bv, false);
        assert_eq!(d, naive(av, bv));
        let bt = View::rows(&b, 4, 5).t();
        gemm(&mut d, true, av, bt, true);
        let want: Vec<f32> = naive(av, bv).iter().zip(naive(av, bt)).map(|(x, y)| x + y).collect();
        assert_eq!(d, want);
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0.0; 5];
        let mut d = vec![0.0; 4];
        gemm(&mut d, false, View::rows(&a, 2, 3), View::rows(&[0.0; 6], 3, 2), false);
    }
}
