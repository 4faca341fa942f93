//! Vectorised host math for the CPU paths: a branch-free `exp` that compilers turn into SIMD
//! code, and the log-sum-exp, softmax, RMSNorm, SwiGLU and GeGLU loops built on it. Each public function
//! runs an AVX-512 or AVX2 + FMA build of the same loop when the CPU has those features.

/// Runs `$body` compiled for AVX-512 or AVX2 + FMA, whichever the CPU has, else as plain code.
macro_rules! vectorised {
    ($($arg:ident : $ty:ty),* => $ret:ty $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) -> $ret $body
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) -> $ret $body
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { avx512($($arg),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                return unsafe { avx2($($arg),*) };
            }
        }
        $body
    }};
}

/// `ln Σ exp(xᵢ)`, stable, vectorised.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    vectorised!(row: &[f32] => f32 { log_sum_exp_lanes(row) })
}

const LANES: usize = 16;

#[inline(always)]
fn log_sum_exp_lanes(row: &[f32]) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks.clone() {
        for i in 0..LANES {
            max[i] = max[i].max(chunk[i]);
        }
    }
    let max = tail
        .iter()
        .chain(&max)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = [0f32; LANES];
    for chunk in chunks {
        for i in 0..LANES {
            sum[i] += exp_approx(chunk[i] - max);
        }
    }
    let total = tail.iter().map(|&x| exp_approx(x - max)).sum::<f32>() + sum.iter().sum::<f32>();
    max + total.ln()
}

/// Replaces `row` by `softmax(row)` and returns `ln Σ exp(row)` (vectorised like [`log_sum_exp`]).
pub fn softmax_in_place(row: &mut [f32]) -> f32 {
    let lse = log_sum_exp(row);
    exp_shifted(row, lse);
    lse
}

/// `row ← e^(row − shift)`.
pub fn exp_shifted(row: &mut [f32], shift: f32) {
    exp_shifted_scaled(row, shift, 1.0);
}

/// `row ← scale · e^(row − shift)` in one pass.
pub fn exp_shifted_scaled(row: &mut [f32], shift: f32, scale: f32) {
    vectorised!(row: &mut [f32], shift: f32, scale: f32 => () {
        for x in row.iter_mut() {
            *x = scale * exp_approx(*x - shift);
        }
    })
}

/// `eˣ` for `x ≤ 0` to about 2 ulp: `2ⁿ · p(r)` with `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`
/// (Cephes' `expf` polynomial); branch-free so loops over it vectorise.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2²³ rounds x·log₂e to an integer n held in the low mantissa bits, so n
    // comes out of a subtraction of bit patterns: no float-to-int cast, which compilers turn
    // into one scalar conversion per lane (Rust's `as` saturates and maps NaN to 0).
    const ROUNDING: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = x.mul_add(LOG2E, ROUNDING);
    let n = shifted - ROUNDING;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 0.166_666_66);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r * r, r) + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDING.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// The logistic function, from `e^(−|x|) ≤ 1` so the exponential never overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_approx(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// `ln(eᵃ + eᵇ)`, stable, with `-∞` as the empty sum.
pub fn log_add_exp(a: f32, b: f32) -> f32 {
    let (high, low) = if a >= b { (a, b) } else { (b, a) };
    if low == f32::NEG_INFINITY {
        return high;
    }
    high + (low - high).exp().ln_1p()
}

/// `row ← row / √(mean(row²) + eps) · weight` (RMSNorm of one row, in f32 as transformers);
/// returns the scale `1 / √(mean(row²) + eps)`.
pub fn rms_norm_in_place(row: &mut [f32], weight: &[f32], eps: f32) -> f32 {
    vectorised!(row: &mut [f32], weight: &[f32], eps: f32 => f32 {
        let mean_square = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        scale_and_weigh(row, weight, scale);
        scale
    })
}

/// `row ← row · scale · weight`: [`rms_norm_in_place`] again from the scale it returned.
pub fn rms_norm_with_scale(row: &mut [f32], weight: &[f32], scale: f32) {
    vectorised!(row: &mut [f32], weight: &[f32], scale: f32 => () {
        scale_and_weigh(row, weight, scale)
    })
}

/// The last step of RMSNorm, in the order transformers multiplies.
#[inline(always)]
fn scale_and_weigh(row: &mut [f32], weight: &[f32], scale: f32) {
    for (x, w) in row.iter_mut().zip(weight) {
        *x = *x * scale * w;
    }
}

/// The backward pass of [`rms_norm_in_place`] for one row `x` with its `scale`: adds
/// `∂L/∂x = s·(dy⊙w) − x·s³·⟨dy⊙w, x⟩/n` to `dx` and `dy⊙x·s` to `d_weight`.
pub fn rms_norm_backward(
    dy: &[f32],
    x: &[f32],
    scale: f32,
    weight: &[f32],
    dx: &mut [f32],
    d_weight: &mut [f32],
) {
    vectorised!(dy: &[f32], x: &[f32], scale: f32, weight: &[f32], dx: &mut [f32],
                d_weight: &mut [f32] => () {
        let mut dot = 0f32;
        for i in 0..x.len() {
            dot += dy[i] * weight[i] * x[i];
        }
        let correction = scale * scale * scale * dot / x.len() as f32;
        for i in 0..x.len() {
            dx[i] += scale * dy[i] * weight[i] - x[i] * correction;
            d_weight[i] += dy[i] * x[i] * scale;
        }
    })
}

/// The backward pass of [`swiglu_in_place`]: with `gate` and `up` the forward's inputs and
/// `d_out` the gradient of its output, `gate ← ∂L/∂gate = d_out·up·σ(g)(1 + g(1 − σ(g)))` and
/// `up ← ∂L/∂up = d_out·silu(g)`.
pub fn swiglu_backward_in_place(gate: &mut [f32], up: &mut [f32], d_out: &[f32]) {
    vectorised!(gate: &mut [f32], up: &mut [f32], d_out: &[f32] => () {
        for ((g, u), &d) in gate.iter_mut().zip(up.iter_mut()).zip(d_out) {
            let sigmoid = sigmoid(*g);
            let d_gate = d * *u * sigmoid * (1.0 + *g * (1.0 - sigmoid));
            *u = d * *g * sigmoid;
            *g = d_gate;
        }
    })
}

/// `row ← row · cos + rotate_half(row) · sin`, with `rotate_half([a, b]) = [−b, a]` (RoPE in
/// the layout of Hugging Face checkpoints).
pub fn rotate_half_in_place(row: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = row.len() / 2;
    let (first, second) = row.split_at_mut(half);
    let (cos_first, cos_second) = cos.split_at(half);
    let (sin_first, sin_second) = sin.split_at(half);
    for j in 0..half {
        let (a, b) = (first[j], second[j]);
        first[j] = a * cos_first[j] + -b * sin_first[j];
        second[j] = b * cos_second[j] + a * sin_second[j];
    }
}

/// `gate ← silu(gate) · up` elementwise (SwiGLU's gating), with `silu(x) = x · σ(x)`.
pub fn swiglu_in_place(gate: &mut [f32], up: &[f32]) {
    vectorised!(gate: &mut [f32], up: &[f32] => () {
        for (g, &u) in gate.iter_mut().zip(up) {
            *g *= sigmoid(*g) * u;
        }
    })
}

/// `√(2/π)`, the tanh approximation's inner factor (torch's `kBeta`).
const GELU_BETA: f32 = 0.797_884_6;
/// The cubic term's coefficient of the tanh approximation (torch's `kKappa`).
const GELU_KAPPA: f32 = 0.044_715;

/// `gate ← gelu_tanh(gate) · up` elementwise (GeGLU's gating), with torch's
/// `gelu(x, approximate="tanh") = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub fn gelu_tanh_glu_in_place(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = GELU_BETA * (x + GELU_KAPPA * x * x * x);
        *g = 0.5 * x * (1.0 + inner.tanh()) * u;
    }
}

/// The backward pass of [`gelu_tanh_glu_in_place`]: `gate ← d_out·up·gelu'(g)` with
/// `gelu'(x) = 0.5(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)`, `t` the tanh above,
/// and `up ← d_out·gelu(g)`.
pub fn gelu_tanh_glu_backward_in_place(gate: &mut [f32], up: &mut [f32], d_out: &[f32]) {
    for ((g, u), &d) in gate.iter_mut().zip(up.iter_mut()).zip(d_out) {
        let x = *g;
        let t = (GELU_BETA * (x + GELU_KAPPA * x * x * x)).tanh();
        let slope = 0.5 * (1.0 + t)
            + 0.5 * x * (1.0 - t * t) * GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x * x);
        let d_gate = d * *u * slope;
        *u = d * 0.5 * x * (1.0 + t);
        *g = d_gate;
    }
}

/// `n` zeros whose pages are already written. `vec![0.0; n]` of a large `n` gets fresh pages
/// the kernel maps to its shared zero page until first written: a buffer that is read before
/// it is written (accumulated into) then copies each page on its first write, and with more
/// than one thread every copy interrupts the other cores to flush their TLBs.
pub fn written_zeros(n: usize) -> Vec<f32> {
    let mut zeros = vec![0f32; n];
    for i in (0..n).step_by(1024) {
        // SAFETY: `i < n`, so the pointer is to an element of `zeros`; the volatile write of
        // the value already there only keeps the compiler from dropping it.
        unsafe { std::ptr::write_volatile(zeros.as_mut_ptr().add(i), 0.0) };
    }
    zeros
}

/// Where a matrix lies in a slice: element `(i, j)` is at `offset + i·row_stride + j·col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl Layout {
    /// A contiguous row-major `rows × cols` matrix at the start of its slice.
    pub fn dense(rows: usize, cols: usize) -> Layout {
        Layout::columns(rows, cols, cols, 0)
    }

    /// `cols` columns starting at `first` of a row-major matrix `row_stride` wide.
    pub fn columns(rows: usize, cols: usize, row_stride: usize, first: usize) -> Layout {
        Layout {
            offset: first,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transposed matrix (the same elements).
    pub fn t(self) -> Layout {
        Layout {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Panics unless every element lies inside a slice of `len` elements.
    fn check(&self, len: usize) {
        let last = self.offset
            + self.rows.saturating_sub(1) * self.row_stride
            + self.cols.saturating_sub(1) * self.col_stride;
        assert!(
            self.rows == 0 || self.cols == 0 || last < len,
            "matrix {self:?} outside a slice of {len}"
        );
    }
}

/// `dst ← a·b` (or `dst += a·b` when `accumulate`) in f32, with the `gemm` crate's kernels, on
/// all rayon threads when `parallel`.
pub fn matmul(
    dst: (&mut [f32], Layout),
    a: (&[f32], Layout),
    b: (&[f32], Layout),
    accumulate: bool,
    parallel: bool,
) {
    let ((dst, d), (a, al), (b, bl)) = (dst, a, b);
    assert!(d.rows == al.rows && d.cols == bl.cols && al.cols == bl.rows);
    d.check(dst.len());
    al.check(a.len());
    bl.check(b.len());
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the layouts were checked to lie inside their slices, and `dst` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            al.cols,
            dst.as_mut_ptr().add(d.offset),
            d.col_stride as isize,
            d.row_stride as isize,
            accumulate,
            a.as_ptr().add(al.offset),
            al.col_stride as isize,
            al.row_stride as isize,
            b.as_ptr().add(bl.offset),
            bl.col_stride as isize,
            bl.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_half_turns_each_pair_by_its_angle() {
        // Pair j is (row[j], row[j + half]); cos/sin repeat over both halves as in RoPE tables.
        let angles = [0.0f32, 0.5, -1.25];
        let cos: Vec<f32> = angles.iter().chain(&angles).map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().chain(&angles).map(|a| a.sin()).collect();
        let mut row = vec![1.0f32, 2.0, -3.0, 0.5, -1.0, 4.0];
        let before = row.clone();
        rotate_half_in_place(&mut row, &cos, &sin);
        for j in 0..3 {
            let (a, b, c, s) = (before[j], before[j + 3], cos[j], sin[j]);
            assert!((row[j] - (a * c - b * s)).abs() < 1e-6);
            assert!((row[j + 3] - (b * c + a * s)).abs() < 1e-6);
        }
    }

    #[test]
    fn swiglu_matches_f64_reference() {
        let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 25.0).collect();
        let up: Vec<f32> = (0..1000).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut fused = gate.clone();
        swiglu_in_place(&mut fused, &up);
        for ((&g, &u), &f) in gate.iter().zip(&up).zip(&fused) {
            let (g, u) = (f64::from(g), f64::from(u));
            let exact = g / (1.0 + (-g).exp()) * u;
            assert!(
                (f64::from(f) - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                "{g} {u}"
            );
        }
    }

    #[test]
    fn log_sum_exp_matches_f64_reference() {
        let row: Vec<f32> = (0..32_003)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 20.0)
            .collect();
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        let exact = max
            + row
                .iter()
                .map(|&x| (f64::from(x) - max).exp())
                .sum::<f64>()
                .ln();
        assert!(
            (f64::from(log_sum_exp(&row)) - exact).abs() < 1e-5,
            "{} vs {exact}",
            log_sum_exp(&row)
        );
        for x in [-87.5f32, -50.0, -10.0, -1.0, -0.3, 0.0] {
            let (a, b) = (exp_approx(x), f64::from(x).exp());
            assert!(
                (f64::from(a) - b).abs() <= 3e-7 * b + 1e-38,
                "exp({x}) = {a} vs {b}"
            );
        }
    }
}
