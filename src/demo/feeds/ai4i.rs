//! A generator of process data following the published generation rules of the AI4I 2020
//! predictive-maintenance dataset (Matzka, 2020; UCI id 601), for load and for many
//! machines. Each machine processes one product per minute:
//!
//! - product quality L/M/H (50/30/20 %), adding 2/3/5 min of tool wear;
//! - air temperature: a random walk around 300 K (standard deviation 2 K);
//! - process temperature: air + 10 K plus a random walk (standard deviation 1 K);
//! - torque: normal around 40 Nm (sd 10 Nm, never negative); rotational speed follows
//!   from a roughly constant power (falls with torque) with normal noise, matching the
//!   dataset's marginals (about 1540 ± 180 rpm);
//! - failure modes, any of which sets `machine_failure`:
//!   TWF tool wear failure: the tool is replaced or fails at a wear drawn from 200-240 min
//!   (failure in 69 of 189 cases, as in the dataset); HDF heat dissipation: process - air
//!   temperature below 8.6 K and speed below 1380 rpm; PWF power (torque × angular speed)
//!   below 3500 W or above 9000 W; OSF overstrain: tool wear × torque above
//!   11,000/12,000/13,000 min·Nm for L/M/H; RNF random failure with probability 0.1 %.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::demo::feeds::feedback::SampleRecord;

/// One generated reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub machine_id: String,
    pub ts_ms: i64,
    pub product_type: char,
    pub air_temperature: f64,
    pub process_temperature: f64,
    pub rotational_speed: f64,
    pub torque: f64,
    pub tool_wear: f64,
    pub twf: bool,
    pub hdf: bool,
    pub pwf: bool,
    pub osf: bool,
    pub rnf: bool,
}

impl Reading {
    pub fn machine_failure(&self) -> bool {
        self.twf || self.hdf || self.pwf || self.osf || self.rnf
    }

    pub fn to_record(&self) -> SampleRecord {
        let flag = |b: bool| i64::from(b);
        let value = serde_json::json!({
            "machine_id": self.machine_id,
            "ts": super::rfc3339_ms(self.ts_ms),
            "product_type": self.product_type.to_string(),
            "air_temperature": round(self.air_temperature, 2),
            "process_temperature": round(self.process_temperature, 2),
            "rotational_speed": self.rotational_speed.round(),
            "torque": round(self.torque, 2),
            "tool_wear": self.tool_wear,
            "machine_failure": flag(self.machine_failure()),
            "twf": flag(self.twf),
            "hdf": flag(self.hdf),
            "pwf": flag(self.pwf),
            "osf": flag(self.osf),
            "rnf": flag(self.rnf),
        });
        super::record(&self.machine_id, self.ts_ms, &value)
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

#[derive(Debug)]
struct Machine {
    id: String,
    air_walk: f64,
    process_walk: f64,
    tool_wear: f64,
    tool_life: f64,
}

/// Readings of `machines` machines, one per machine per `interval_ms`, in time order.
#[derive(Debug)]
pub struct ProcessGenerator {
    rng: StdRng,
    machines: Vec<Machine>,
    next_machine: usize,
    ts_ms: i64,
    interval_ms: i64,
    normal: Normal<f64>,
}

impl ProcessGenerator {
    pub fn new(seed: u64, machines: usize, start_ms: i64, interval_ms: i64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let machines = (0..machines)
            .map(|i| Machine {
                id: format!("mill-{i:03}"),
                air_walk: 0.0,
                process_walk: 0.0,
                tool_wear: rng.random_range(0.0..200.0f64).floor(),
                tool_life: rng.random_range(200.0..=240.0f64).floor(),
            })
            .collect();
        ProcessGenerator {
            rng,
            machines,
            next_machine: 0,
            ts_ms: start_ms,
            interval_ms,
            normal: Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!("sd 1 is valid")),
        }
    }

    fn gauss(&mut self) -> f64 {
        self.normal.sample(&mut self.rng)
    }
}

impl Iterator for ProcessGenerator {
    type Item = Reading;

    fn next(&mut self) -> Option<Reading> {
        if self.machines.is_empty() {
            return None;
        }
        let index = self.next_machine;
        self.next_machine = (index + 1) % self.machines.len();
        let ts_ms = self.ts_ms;
        if self.next_machine == 0 {
            self.ts_ms += self.interval_ms;
        }
        let quality: f64 = self.rng.random();
        let (product_type, wear_step, osf_limit) = if quality < 0.5 {
            ('L', 2.0, 11_000.0)
        } else if quality < 0.8 {
            ('M', 3.0, 12_000.0)
        } else {
            ('H', 5.0, 13_000.0)
        };
        // Mean-reverting walks keep the published standard deviations (2 K and 1 K).
        let (g1, g2, g3, g4) = (self.gauss(), self.gauss(), self.gauss(), self.gauss());
        let m = &mut self.machines[index];
        m.air_walk = 0.98 * m.air_walk + 2.0 * (1.0f64 - 0.98 * 0.98).sqrt() * g1;
        m.process_walk = 0.98 * m.process_walk + (1.0f64 - 0.98 * 0.98).sqrt() * g2;
        let air = 300.0 + m.air_walk;
        let process = air + 10.0 + m.process_walk;
        let torque = (40.0 + 10.0 * g3).max(3.8);
        let speed = (1538.0 - 15.8 * (torque - 40.0) + 85.0 * g4).max(1168.0);
        m.tool_wear += wear_step;
        let mut twf = false;
        if m.tool_wear >= m.tool_life {
            twf = self.rng.random_bool(69.0 / 189.0);
            let m = &mut self.machines[index];
            m.tool_wear = 0.0;
            m.tool_life = self.rng.random_range(200.0..=240.0f64).floor();
        }
        let m = &self.machines[index];
        let wear = if twf { m.tool_life } else { m.tool_wear };
        let power = torque * speed * 2.0 * std::f64::consts::PI / 60.0;
        let reading = Reading {
            machine_id: m.id.clone(),
            ts_ms,
            product_type,
            air_temperature: air,
            process_temperature: process,
            rotational_speed: speed,
            torque,
            tool_wear: m.tool_wear,
            twf,
            hdf: process - air < 8.6 && speed < 1380.0,
            pwf: !(3500.0..=9000.0).contains(&power),
            osf: wear * torque > osf_limit,
            rnf: self.rng.random_bool(0.001),
        };
        Some(reading)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_published_marginals_and_failure_rules() {
        let readings: Vec<Reading> = ProcessGenerator::new(3, 50, 0, 60_000)
            .take(20_000)
            .collect();
        let mean = |f: &dyn Fn(&Reading) -> f64| {
            readings.iter().map(f).sum::<f64>() / readings.len() as f64
        };
        let torque = mean(&|r| r.torque);
        let speed = mean(&|r| r.rotational_speed);
        let air = mean(&|r| r.air_temperature);
        assert!((torque - 40.0).abs() < 1.0, "{torque}");
        assert!((speed - 1538.0).abs() < 20.0, "{speed}");
        assert!((air - 300.0).abs() < 1.0, "{air}");
        for r in &readings {
            let power = r.torque * r.rotational_speed * 2.0 * std::f64::consts::PI / 60.0;
            assert_eq!(r.pwf, !(3500.0..=9000.0).contains(&power));
            assert_eq!(
                r.hdf,
                r.process_temperature - r.air_temperature < 8.6 && r.rotational_speed < 1380.0
            );
        }
        // AI4I has 3.4 % failures; the rules give a few percent here too.
        let failures = readings.iter().filter(|r| r.machine_failure()).count() as f64;
        let rate = failures / readings.len() as f64;
        assert!((0.01..0.08).contains(&rate), "{rate}");
        // One reading per machine per interval, in time order.
        assert_eq!(readings[49].ts_ms, 0);
        assert_eq!(readings[50].ts_ms, 60_000);
        assert_eq!(readings[50].machine_id, "mill-000");
        let again: Vec<Reading> = ProcessGenerator::new(3, 50, 0, 60_000).take(100).collect();
        assert_eq!(again, readings[..100]);
    }
}
